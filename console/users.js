// Users: list with a login filter and paging, create, lock / unlock, role; and one user's page with
// its network and device-type assignments. A client user sees only itself (the API says so).

import { all, currentSession, del, describe, get, isAdmin, post, put } from './api.js';
import { clear, errorBox, field, h, modal, pager, table, time, toast } from './dom.js';

const PAGE = 20;
const ROLES = ['admin', 'client'];
const STATUSES = ['active', 'locked', 'disabled'];

/** A user update that keeps `data` (the hub sets it to null when an update leaves it out). */
function update(user, changes) {
  return put(`/user/${user.id}`, { data: user.data ?? null, ...changes });
}

export function render(main) {
  const state = { skip: 0, take: PAGE, total: 0, login: '' };
  const error = errorBox();
  const list = h('div', { class: 'list' });
  const filter = h('input', { type: 'search', placeholder: 'Login contains…', 'aria-label': 'Filter users by login' });
  let debounce;
  filter.addEventListener('input', () => {
    clearTimeout(debounce);
    debounce = setTimeout(() => {
      state.login = filter.value.trim();
      state.skip = 0;
      load();
    }, 250);
  });
  main.append(
    h('h1', {}, 'Users'),
    h('div', { class: 'toolbar' }, filter, isAdmin() ? h('button', { type: 'button', onclick: create }, 'New user') : null),
    error,
    list);

  async function load() {
    const query = state.login ? { loginPattern: `%${state.login}%` } : {};
    try {
      const [rows, count] = await Promise.all([
        get('/user', { ...query, sortField: 'login', take: state.take, skip: state.skip }),
        get('/user/count', query),
      ]);
      state.total = count.count;
      error.show('');
      const me = currentSession()?.user?.id;
      clear(list).append(
        table([
          { label: 'Login', cell: (u) => h('a', { href: `#/user/${u.id}` }, u.login) },
          {
            label: 'Role',
            cell: (u) => (isAdmin() && u.id !== me
              ? h('select', {
                'aria-label': `Role of ${u.login}`,
                onchange: (event) => change(u, { role: Number(event.target.value) }, 'Role changed'),
              }, ROLES.map((r, i) => h('option', { value: i, selected: u.role === i }, r)))
              : ROLES[u.role] ?? String(u.role)),
          },
          { label: 'Status', cell: (u) => h('span', { class: `badge ${u.status === 0 ? 'ok' : 'warn'}` }, STATUSES[u.status] ?? String(u.status)) },
          { label: 'Last login', cell: (u) => time(u.lastLogin) || 'never' },
          {
            label: 'Actions',
            cell: (u) => h('div', { class: 'row-actions' },
              h('a', { class: 'button secondary', href: `#/user/${u.id}` }, 'Assignments'),
              isAdmin() && u.id !== me
                ? h('button', {
                  type: 'button',
                  class: u.status === 0 ? 'danger' : 'secondary',
                  'aria-label': `${u.status === 0 ? 'Lock' : 'Unlock'} ${u.login}`,
                  onclick: () => change(u, { status: u.status === 0 ? 1 : 0 }, u.status === 0 ? 'User locked' : 'User unlocked'),
                }, u.status === 0 ? 'Lock' : 'Unlock')
                : null),
          },
        ], rows, { empty: state.login ? 'No users match.' : 'No users.', caption: 'Users' }),
        pager(state, (skip) => {
          state.skip = skip;
          load();
        }));
    } catch (e) {
      if (e.status === 403) showSelf();
      else error.show(describe(e));
    }
  }

  /** A client account may not list users: it sees its own account instead. */
  async function showSelf() {
    try {
      const me = await get('/user/current');
      clear(list).append(
        h('p', { class: 'muted' }, 'Your account may not manage users. Your own account:'),
        table([
          { label: 'Login', cell: (u) => u.login },
          { label: 'Role', cell: (u) => ROLES[u.role] ?? String(u.role) },
          { label: 'Networks', cell: (u) => u.networks.map((n) => n.name).join(', ') || 'none' },
          { label: 'Last login', cell: (u) => time(u.lastLogin) || 'never' },
        ], [me], { caption: 'Your account' }));
    } catch (e) {
      error.show(describe(e));
    }
  }

  async function change(user, changes, message) {
    try {
      await update(user, changes);
      toast(message);
    } catch (e) {
      error.show(describe(e));
    }
    load();
  }

  async function create() {
    const created = await modal('New user', (close) => {
      const login = h('input', { name: 'login', required: true, minlength: 3, maxlength: 128, autocomplete: 'off', autocapitalize: 'none', spellcheck: 'false' });
      const password = h('input', { name: 'password', type: 'password', required: true, minlength: 6, maxlength: 128, autocomplete: 'new-password' });
      const role = h('select', { name: 'role' }, h('option', { value: 1, selected: true }, 'client'), h('option', { value: 0 }, 'admin'));
      const formError = errorBox();
      return h('form', {
        onsubmit: async (event) => {
          event.preventDefault();
          try {
            const user = await post('/user', { login: login.value.trim(), password: password.value, role: Number(role.value) });
            close(user);
          } catch (e) {
            formError.show(describe(e));
          }
        },
      },
      field('Login', login, '3 to 128 letters, digits and _ @ . -'),
      field('Password', password, '6 to 128 characters'),
      field('Role', role),
      formError,
      h('div', { class: 'actions' },
        h('button', { type: 'submit' }, 'Create'),
        h('button', { type: 'button', class: 'secondary', onclick: () => close(null) }, 'Cancel')));
    });
    if (created) {
      toast('User created');
      location.hash = `#/user/${created.id}`;
    }
  }

  load();
}

/** One user: properties, and (for admins) its networks and device types. */
export function renderUser(main, id) {
  const error = errorBox();
  const heading = h('h1', {}, `User ${id}`);
  const body = h('div', {});
  main.append(h('p', { class: 'crumbs' }, h('a', { href: '#/users' }, 'Users'), ' / ', id), heading, error, body);

  async function load() {
    let user;
    try {
      user = await get(`/user/${id}`);
    } catch (e) {
      error.show(describe(e));
      return;
    }
    heading.textContent = user.login;
    const assigned = new Set(user.networks.map((n) => n.id));
    const [networks, deviceTypes, userTypes] = await Promise.all([
      all('/network', { sortField: 'name' }).catch(() => user.networks),
      all('/devicetype', { sortField: 'name' }).catch(() => []),
      user.allDeviceTypesAvailable ? Promise.resolve(null) : get(`/user/${id}/devicetype`).catch(() => []),
    ]);
    const typesAssigned = new Set((userTypes || []).map((t) => t.id));
    const admin = isAdmin();

    const toggle = (label, checked, on, off) => {
      const box = h('input', { type: 'checkbox', checked, disabled: !admin });
      box.addEventListener('change', async () => {
        try {
          await (box.checked ? on() : off());
          toast(box.checked ? `${label}: assigned` : `${label}: unassigned`);
          error.show('');
        } catch (e) {
          box.checked = !box.checked;
          error.show(describe(e));
        }
      });
      return h('label', { class: 'check' }, box, ` ${label}`);
    };

    const allTypes = h('input', { type: 'checkbox', checked: user.allDeviceTypesAvailable, disabled: !admin });
    allTypes.addEventListener('change', async () => {
      try {
        if (allTypes.checked) await put(`/user/${id}/devicetype/all`);
        else await del(`/user/${id}/devicetype/all`);
        load();
      } catch (e) {
        allTypes.checked = !allTypes.checked;
        error.show(describe(e));
      }
    });

    clear(body).append(
      h('section', { class: 'card' },
        h('dl', { class: 'props' },
          h('dt', {}, 'Id'), h('dd', {}, String(user.id)),
          h('dt', {}, 'Role'), h('dd', {}, ROLES[user.role] ?? String(user.role)),
          h('dt', {}, 'Status'), h('dd', {}, STATUSES[user.status] ?? String(user.status)),
          h('dt', {}, 'Last login'), h('dd', {}, time(user.lastLogin) || 'never'))),
      h('div', { class: 'columns' },
        h('section', { class: 'card', id: 'user-networks' },
          h('h2', {}, 'Networks'),
          user.role === 0 ? h('p', { class: 'muted small' }, 'Admins reach every network; assignments matter for clients.') : null,
          networks.length
            ? h('div', { class: 'checks' }, networks.map((n) => toggle(n.name, assigned.has(n.id),
              () => put(`/user/${id}/network/${n.id}`), () => del(`/user/${id}/network/${n.id}`))))
            : h('p', { class: 'empty' }, 'No networks.')),
        h('section', { class: 'card', id: 'user-devicetypes' },
          h('h2', {}, 'Device types'),
          h('label', { class: 'check' }, allTypes, ' All device types'),
          user.allDeviceTypesAvailable
            ? null
            : h('div', { class: 'checks' }, deviceTypes.map((t) => toggle(t.name, typesAssigned.has(t.id),
              () => put(`/user/${id}/devicetype/${t.id}`), () => del(`/user/${id}/devicetype/${t.id}`)))))));
  }
  load();
}
