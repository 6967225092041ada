// Tokens: mint an access/refresh pair (`POST /token/create`) for a user, or for a device (a user's
// token narrowed to the device's network and type with the actions a device needs), with chosen
// actions, networks, device types and lifetime. The tokens are shown once, with a copyable MQTT
// connection example; the console keeps no copy.

import { MQTT_PORT, all, currentSession, describe, get, isAdmin, post } from './api.js';
import { clear, copyText, errorBox, field, h } from './dom.js';

const ACTIONS = [
  'GetNetwork', 'GetDevice', 'GetDeviceNotification', 'GetDeviceCommand', 'RegisterDevice',
  'CreateDeviceCommand', 'UpdateDeviceCommand', 'CreateDeviceNotification', 'GetCurrentUser',
  'UpdateCurrentUser', 'ManageUser', 'ManageConfiguration', 'ManageNetwork', 'ManageToken',
  'ManagePlugin', 'GetDeviceType', 'ManageDeviceType',
];
const PRESETS = {
  device: ['GetDevice', 'RegisterDevice', 'CreateDeviceNotification', 'GetDeviceCommand', 'UpdateDeviceCommand'],
  client: ['GetNetwork', 'GetDevice', 'GetDeviceNotification', 'GetDeviceCommand', 'RegisterDevice', 'CreateDeviceCommand',
    'UpdateDeviceCommand', 'CreateDeviceNotification', 'GetCurrentUser', 'UpdateCurrentUser', 'ManageToken', 'GetDeviceType'],
  readonly: ['GetNetwork', 'GetDevice', 'GetDeviceNotification', 'GetDeviceCommand', 'GetDeviceType'],
};
const LIFETIMES = [['1 hour', 3600], ['1 day', 86400], ['30 days', 30 * 86400], ['1 year', 365 * 86400]];

/** Shell quoting for the example commands (single quotes). */
const quote = (text) => `'${String(text).replace(/'/g, `'\\''`)}'`;

export function render(main) {
  const error = errorBox();
  const form = h('form', { class: 'card', id: 'token-form' });
  const result = h('div', { id: 'token-result' });
  main.append(h('h1', {}, 'Tokens'),
    h('p', { class: 'muted' }, 'Create an access token for a device or a user. It is shown once; devices use it as their MQTT password.'),
    error, form, result);

  (async () => {
    let users;
    let devices;
    let networks;
    let deviceTypes;
    try {
      [users, devices, networks, deviceTypes] = await Promise.all([
        isAdmin() ? all('/user', { sortField: 'login' }) : get('/user/current').then((u) => [u]),
        all('/device', { sortField: 'name' }),
        all('/network', { sortField: 'name' }),
        all('/devicetype', { sortField: 'name' }),
      ]);
    } catch (e) {
      error.show(describe(e));
      return;
    }
    const me = currentSession()?.user?.id;

    const kind = h('select', { name: 'kind' }, h('option', { value: 'device' }, 'A device'), h('option', { value: 'user' }, 'A user'));
    const user = h('select', { name: 'userId' }, users.map((u) => h('option', { value: u.id, selected: u.id === me }, u.login)));
    const device = h('select', { name: 'deviceId' }, devices.map((d) => h('option', { value: d.id }, `${d.name} (${d.id})`)));
    const deviceField = field('Device', device, 'The token gets the device’s network and type.');
    const lifetime = h('select', { name: 'lifetime' }, LIFETIMES.map(([label, secs]) => h('option', { value: secs, selected: secs === 86400 }, label)));

    const actionBoxes = new Map(ACTIONS.map((a) => [a, h('input', { type: 'checkbox', name: 'action', value: a })]));
    const setActions = (names) => {
      for (const [a, box] of actionBoxes) box.checked = names.includes(a);
    };
    const presetButtons = h('div', { class: 'row-actions' },
      h('span', { class: 'muted small' }, 'Presets:'),
      Object.keys(PRESETS).map((p) => h('button', { type: 'button', class: 'secondary small', onclick: () => setActions(PRESETS[p]) }, p)),
      isAdmin() ? h('button', { type: 'button', class: 'secondary small', onclick: () => setActions(ACTIONS) }, 'everything') : null);

    const groupChoice = (label, items, name) => {
      const allBox = h('input', { type: 'checkbox', name: `${name}-all` });
      const boxes = new Map(items.map((g) => [g.id, h('input', { type: 'checkbox', name, value: g.id })]));
      const list = h('div', { class: 'checks' }, items.map((g) => h('label', { class: 'check' }, boxes.get(g.id), ` ${g.name}`)));
      allBox.addEventListener('change', () => {
        list.hidden = allBox.checked;
      });
      const fieldset = h('fieldset', {}, h('legend', {}, label), h('label', { class: 'check' }, allBox, ` All ${label.toLowerCase()}`), list);
      return {
        fieldset,
        set(ids, everything) {
          allBox.checked = everything;
          list.hidden = everything;
          for (const [id, box] of boxes) box.checked = ids.includes(id);
        },
        value() {
          return allBox.checked ? ['*'] : [...boxes].filter(([, b]) => b.checked).map(([id]) => id);
        },
      };
    };
    const networkChoice = groupChoice('Networks', networks, 'networkId');
    const typeChoice = groupChoice('Device types', deviceTypes, 'deviceTypeId');

    const applyKind = () => {
      const forDevice = kind.value === 'device';
      deviceField.hidden = !forDevice;
      if (forDevice) {
        const d = devices.find((x) => x.id === device.value);
        setActions(PRESETS.device);
        networkChoice.set(d?.networkId != null ? [d.networkId] : [], false);
        typeChoice.set(d?.deviceTypeId != null ? [d.deviceTypeId] : [], false);
      } else {
        setActions(PRESETS.client);
        networkChoice.set([], true);
        typeChoice.set([], true);
      }
    };
    kind.addEventListener('change', applyKind);
    device.addEventListener('change', applyKind);
    if (!devices.length) kind.value = 'user';
    applyKind();

    const formError = errorBox();
    const submit = h('button', { type: 'submit' }, 'Create token');
    form.addEventListener('submit', async (event) => {
      event.preventDefault();
      formError.show('');
      const actions = [...actionBoxes].filter(([, b]) => b.checked).map(([a]) => a);
      if (!actions.length) {
        formError.show('Choose at least one action.');
        return;
      }
      const expiration = new Date(Date.now() + Number(lifetime.value) * 1000).toISOString();
      const body = {
        userId: Number(user.value),
        actions: actions.length === ACTIONS.length ? ['*'] : actions,
        networkIds: networkChoice.value(),
        deviceTypeIds: typeChoice.value(),
        expiration,
        refreshExpiration: expiration,
      };
      submit.disabled = true;
      try {
        const tokens = await post('/token/create', body);
        const forDevice = kind.value === 'device' ? devices.find((x) => x.id === device.value) : null;
        showResult(tokens, forDevice, expiration);
      } catch (e) {
        formError.show(describe(e));
      } finally {
        submit.disabled = false;
      }
    });

    form.append(
      h('h2', {}, 'New token'),
      h('div', { class: 'grid-2' }, field('For', kind), field('On behalf of user', user)),
      deviceField,
      h('fieldset', {}, h('legend', {}, 'Actions'), presetButtons,
        h('div', { class: 'checks' }, [...actionBoxes].map(([a, box]) => h('label', { class: 'check' }, box, ` ${a}`)))),
      h('div', { class: 'grid-2' }, networkChoice.fieldset, typeChoice.fieldset),
      field('Lifetime', lifetime),
      formError,
      h('div', { class: 'actions' }, submit));
  })();

  function showResult(tokens, forDevice, expiration) {
    const host = location.hostname;
    const hostArg = host.includes(':') ? `[${host}]` : host;
    const access = h('textarea', { readonly: true, rows: 3, id: 'access-token', spellcheck: 'false', 'aria-label': 'Access token' });
    access.value = tokens.accessToken;
    const refresh = h('textarea', { readonly: true, rows: 3, id: 'refresh-token', spellcheck: 'false', 'aria-label': 'Refresh token' });
    refresh.value = tokens.refreshToken;
    const lines = forDevice
      ? [
        `# The device connects with its id as client id and the token as password.`,
        `mosquitto_sub -h ${hostArg} -p ${MQTT_PORT} -i ${quote(forDevice.id)} -u device -P ${quote(tokens.accessToken)} -q 1 \\`,
        `  -t ${quote(`dh/command/${forDevice.networkId}/${forDevice.deviceTypeId}/${forDevice.id}/#`)} -v`,
        `mosquitto_pub -h ${hostArg} -p ${MQTT_PORT} -i ${quote(`${forDevice.id}-pub`)} -u device -P ${quote(tokens.accessToken)} -q 1 \\`,
        `  -t ${quote(`dh/notification/${forDevice.networkId}/${forDevice.deviceTypeId}/${forDevice.id}/temperature`)} -m '{"parameters":{"celsius":22}}'`,
      ]
      : [
        `# Any username; the token is the password.`,
        `mosquitto_sub -h ${hostArg} -p ${MQTT_PORT} -u token -P ${quote(tokens.accessToken)} -t 'dh/notification/#' -v`,
      ];
    const example = h('textarea', { readonly: true, rows: lines.length * 2 + 1, id: 'mqtt-example', spellcheck: 'false', 'aria-label': 'MQTT connection example' });
    example.value = lines.join('\n');
    const copy = (target) => h('button', { type: 'button', class: 'secondary', onclick: () => copyText(target.value, target) }, 'Copy');
    clear(result).append(h('section', { class: 'card highlight', 'aria-live': 'polite' },
      h('h2', {}, forDevice ? `Token for device ${forDevice.name}` : 'Token created'),
      h('p', { class: 'warn-text' }, `Shown only now: copy it before leaving this page. Valid until ${new Date(expiration).toLocaleString()}.`),
      field('Access token (MQTT password, Bearer token)', access), copy(access),
      field('Refresh token', refresh), copy(refresh),
      field('MQTT connection example', example), copy(example)));
    result.scrollIntoView({ behavior: 'smooth', block: 'start' });
  }
}
