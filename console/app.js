// The console's shell: the login form, the navigation and a hash router (#/devices, #/device/ID, ...).
// Each page module exports `render(main, params)`, which may return a cleanup function (timers,
// live connections) called when the page is left.

import { currentSession, describe, login, logout, onSession } from './api.js';
import { clear, errorBox, field, h } from './dom.js';
import * as overview from './overview.js';
import { networks, deviceTypes } from './groups.js';
import * as devices from './devices.js';
import * as device from './device.js';
import * as users from './users.js';
import * as tokens from './tokens.js';

const routes = [
  [/^overview$/, overview.render, 'overview'],
  [/^networks$/, networks.render, 'networks'],
  [/^devicetypes$/, deviceTypes.render, 'devicetypes'],
  [/^devices$/, devices.render, 'devices'],
  [/^device\/(.+)$/, device.render, 'devices'],
  [/^users$/, users.render, 'users'],
  [/^user\/(\d+)$/, users.renderUser, 'users'],
  [/^tokens$/, tokens.render, 'tokens'],
];

const main = document.getElementById('main');
let cleanup = null;

function route() {
  if (typeof cleanup === 'function') cleanup();
  cleanup = null;
  closeMenu();
  if (!currentSession()) {
    showLogin();
    return;
  }
  showShell();
  const path = location.hash.replace(/^#\/?/, '').split('?')[0] || 'overview';
  const match = routes.map(([re, render, nav]) => [re.exec(path), render, nav]).find(([m]) => m);
  // Captures (a device id) arrive URI-encoded.
  clear(main);
  if (!match) {
    main.append(h('h1', {}, 'Not found'), h('p', {}, 'There is no such page. '), h('a', { href: '#/overview' }, 'Go to the overview'));
    return;
  }
  const [m, render, nav] = match;
  for (const a of document.querySelectorAll('#nav a')) {
    if (a.getAttribute('href') === `#/${nav}`) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  try {
    cleanup = render(main, ...m.slice(1).map(decodeURIComponent));
  } catch (e) {
    main.append(h('p', { class: 'error', role: 'alert' }, describe(e)));
  }
  // Keyboard and screen-reader users land on the new page's heading.
  const heading = main.querySelector('h1');
  if (heading) {
    heading.tabIndex = -1;
    heading.focus({ preventScroll: true });
  }
}

function showShell() {
  const s = currentSession();
  document.getElementById('topbar').hidden = false;
  const role = s.user?.role === 0 ? 'admin' : 'client';
  document.getElementById('whoami').textContent = `${s.user?.login ?? ''} (${role})`;
  document.body.classList.toggle('client-user', s.user?.role !== 0);
}

function showLogin() {
  document.getElementById('topbar').hidden = true;
  clear(main);
  const loginInput = h('input', { name: 'login', autocomplete: 'username', required: true, autocapitalize: 'none', spellcheck: 'false' });
  const passwordInput = h('input', { name: 'password', type: 'password', autocomplete: 'current-password', required: true });
  const error = errorBox();
  const button = h('button', { type: 'submit' }, 'Log in');
  if (logout.reason) error.show(logout.reason);
  const form = h('form', {
    class: 'card login',
    onsubmit: async (event) => {
      event.preventDefault();
      error.show('');
      button.disabled = true;
      try {
        await login(loginInput.value.trim(), passwordInput.value);
        logout.reason = '';
        if (!location.hash || location.hash === '#/' || location.hash === '#') location.hash = '#/overview';
        else route();
      } catch (e) {
        error.show(e.status === 401 ? 'Wrong login or password.' + (e.message && e.message !== 'Invalid credentials' ? ` (${e.message})` : '') : describe(e));
        passwordInput.select();
      } finally {
        button.disabled = false;
      }
    },
  },
  h('h1', {}, 'hivehub console'),
  h('p', { class: 'muted' }, 'Log in with a hub user’s login and password.'),
  field('Login', loginInput),
  field('Password', passwordInput),
  error,
  button);
  main.append(h('div', { class: 'login-wrap' }, form));
  loginInput.focus();
}

const menuToggle = document.getElementById('menu-toggle');
function closeMenu() {
  document.getElementById('nav').classList.remove('open');
  menuToggle.setAttribute('aria-expanded', 'false');
}
menuToggle.addEventListener('click', () => {
  const nav = document.getElementById('nav');
  const open = nav.classList.toggle('open');
  menuToggle.setAttribute('aria-expanded', String(open));
});
document.getElementById('logout').addEventListener('click', () => {
  logout();
});

let wasLoggedIn = Boolean(currentSession());
onSession((s) => {
  // Log-out (or an ended session) shows the login form at once; a refresh changes nothing visible.
  if (!s && wasLoggedIn) route();
  wasLoggedIn = Boolean(s);
});
window.addEventListener('hashchange', route);
route();
