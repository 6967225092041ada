// Devices: list with filters (name, network) and paging, create, edit, block; and who is connected
// now over MQTT. Presence comes from the hub's `$device-connected` / `$device-disconnected`
// notifications (emitted when an MQTT session's client id is the device id), read with the public
// notification query of each listed device, so the console sees only what the user may see.

import { all, describe, get, put } from './api.js';
import { clear, errorBox, field, h, hashQuery, json, modal, pager, parseObject, table, time, toast } from './dom.js';

const PAGE = 20;
export const PRESENCE_NAMES = '$device-connected,$device-disconnected';

/** The device's last MQTT presence: {connected, at, reason} or null when none is recorded. */
export async function presenceOf(deviceId) {
  const [last] = await get(`/device/${encodeURIComponent(deviceId)}/notification`, { names: PRESENCE_NAMES, take: 1, sortOrder: 'DESC' });
  return last ? presenceFrom(last) : null;
}

export function presenceFrom(notification) {
  return {
    connected: notification.notification === '$device-connected',
    at: notification.timestamp,
    reason: notification.parameters?.reason ?? null,
  };
}

/** A badge for a presence (text only). */
export function presenceBadge(presence) {
  if (!presence) return h('span', { class: 'badge muted' }, 'never seen');
  if (presence.connected) return h('span', { class: 'badge ok', title: `since ${time(presence.at)}` }, 'connected');
  return h('span', { class: 'badge', title: `${presence.reason ?? ''} at ${time(presence.at)}` }, 'offline');
}

/** Networks and device types by id, for names in tables and choices in forms. */
export async function groups() {
  const [networks, deviceTypes] = await Promise.all([
    all('/network', { sortField: 'name' }).catch(() => []),
    all('/devicetype', { sortField: 'name' }).catch(() => []),
  ]);
  return { networks, deviceTypes, network: new Map(networks.map((n) => [n.id, n])), deviceType: new Map(deviceTypes.map((t) => [t.id, t])) };
}

/** The create/edit dialog; resolves true when saved. */
export function editDevice(device, known) {
  return modal(device ? 'Edit device' : 'New device', (close) => {
    const id = h('input', { name: 'id', required: true, maxlength: 48, pattern: '[a-zA-Z0-9\\-]+', value: device?.id ?? '', readonly: Boolean(device), autocapitalize: 'none', spellcheck: 'false' });
    const name = h('input', { name: 'name', required: true, maxlength: 128, value: device?.name ?? '' });
    const network = h('select', { name: 'networkId' },
      known.networks.map((n) => h('option', { value: n.id, selected: device?.networkId === n.id }, n.name)));
    const deviceType = h('select', { name: 'deviceTypeId' },
      known.deviceTypes.map((t) => h('option', { value: t.id, selected: device?.deviceTypeId === t.id }, t.name)));
    const blocked = h('input', { type: 'checkbox', name: 'isBlocked', checked: Boolean(device?.isBlocked) });
    const data = h('textarea', { name: 'data', rows: 3, spellcheck: 'false', placeholder: '{"location": "greenhouse"}' });
    data.value = device?.data ? JSON.stringify(device.data, null, 2) : '';
    const formError = errorBox();
    return h('form', {
      onsubmit: async (event) => {
        event.preventDefault();
        try {
          const body = {
            name: name.value.trim(),
            // The hub replaces `data` on every update: send what the form shows.
            data: parseObject(data.value, 'Data'),
            isBlocked: blocked.checked,
          };
          if (network.value) body.networkId = Number(network.value);
          if (deviceType.value) body.deviceTypeId = Number(deviceType.value);
          await put(`/device/${encodeURIComponent(id.value.trim())}`, body);
          close(true);
        } catch (e) {
          formError.show(describe(e));
        }
      },
    },
    field('Device id', id, device ? null : 'Letters, digits and dashes; an MQTT device uses it as its client id.'),
    field('Name', name),
    known.networks.length ? field('Network', network) : null,
    known.deviceTypes.length ? field('Device type', deviceType) : null,
    field('Data (JSON object, optional)', data),
    h('div', { class: 'field checkbox' }, h('label', {}, blocked, ' Blocked')),
    formError,
    h('div', { class: 'actions' },
      h('button', { type: 'submit' }, 'Save'),
      h('button', { type: 'button', class: 'secondary', onclick: () => close(false) }, 'Cancel')));
  });
}

/** Blocks or unblocks a device (keeping its data, which an update without it would erase). */
export async function setBlocked(device, blocked) {
  await put(`/device/${encodeURIComponent(device.id)}`, { isBlocked: blocked, data: device.data ?? null });
}

export function render(main) {
  const query = hashQuery();
  const state = { skip: 0, take: PAGE, total: 0, name: '', networkId: query.get('networkId') || '' };
  const error = errorBox();
  const list = h('div', { class: 'list' });
  const summary = h('p', { class: 'muted', 'aria-live': 'polite' });
  const nameFilter = h('input', { type: 'search', placeholder: 'Name contains…', 'aria-label': 'Filter devices by name' });
  const networkFilter = h('select', { 'aria-label': 'Filter devices by network' }, h('option', { value: '' }, 'All networks'));
  let known = { networks: [], deviceTypes: [], network: new Map(), deviceType: new Map() };
  let debounce;
  nameFilter.addEventListener('input', () => {
    clearTimeout(debounce);
    debounce = setTimeout(() => {
      state.name = nameFilter.value.trim();
      state.skip = 0;
      load();
    }, 250);
  });
  networkFilter.addEventListener('change', () => {
    state.networkId = networkFilter.value;
    state.skip = 0;
    load();
  });
  main.append(
    h('h1', {}, 'Devices'),
    h('div', { class: 'toolbar' }, nameFilter, networkFilter,
      h('button', { type: 'button', onclick: async () => (await editDevice(null, known)) && (toast('Device saved'), load()) }, 'New device')),
    error,
    summary,
    list);

  async function load() {
    const filters = {};
    if (state.name) filters.namePattern = `%${state.name}%`;
    if (state.networkId) filters.networkId = state.networkId;
    try {
      const [rows, count] = await Promise.all([
        get('/device', { ...filters, sortField: 'name', sortOrder: 'ASC', take: state.take, skip: state.skip }),
        get('/device/count', filters),
      ]);
      state.total = count.count;
      error.show('');
      const presence = new Map(await Promise.all(rows.map(async (d) => [d.id, await presenceOf(d.id).catch(() => null)])));
      const online = rows.filter((d) => presence.get(d.id)?.connected).length;
      summary.textContent = rows.length ? `${online} of the ${rows.length} devices shown are connected over MQTT now.` : '';
      clear(list).append(
        table([
          { label: 'Name', cell: (d) => h('a', { href: `#/device/${encodeURIComponent(d.id)}`, class: 'device-link' }, d.name) },
          { label: 'Id', cell: (d) => h('code', {}, d.id) },
          { label: 'Network', cell: (d) => known.network.get(d.networkId)?.name ?? String(d.networkId ?? '') },
          { label: 'Type', cell: (d) => known.deviceType.get(d.deviceTypeId)?.name ?? String(d.deviceTypeId ?? '') },
          { label: 'MQTT', cell: (d) => presenceBadge(presence.get(d.id)) },
          { label: 'Blocked', cell: (d) => (d.isBlocked ? h('span', { class: 'badge warn' }, 'blocked') : 'no') },
          { label: 'Data', cell: (d) => (d.data ? h('code', { class: 'clip' }, json(d.data)) : '') },
          {
            label: 'Actions',
            cell: (d) => h('div', { class: 'row-actions' },
              h('button', { type: 'button', class: 'secondary', 'aria-label': `Edit ${d.name}`, onclick: async () => (await editDevice(d, known)) && (toast('Device saved'), load()) }, 'Edit'),
              h('button', {
                type: 'button',
                class: 'secondary',
                'aria-label': `${d.isBlocked ? 'Unblock' : 'Block'} ${d.name}`,
                onclick: async () => {
                  try {
                    await setBlocked(d, !d.isBlocked);
                    toast(d.isBlocked ? 'Device unblocked' : 'Device blocked');
                    load();
                  } catch (e) {
                    error.show(describe(e));
                  }
                },
              }, d.isBlocked ? 'Unblock' : 'Block')),
          },
        ], rows, { empty: state.name || state.networkId ? 'No devices match.' : 'No devices yet.', caption: 'Devices' }),
        pager(state, (skip) => {
          state.skip = skip;
          load();
        }));
    } catch (e) {
      error.show(describe(e));
    }
  }

  groups().then((g) => {
    known = g;
    for (const n of g.networks) networkFilter.append(h('option', { value: n.id, selected: String(n.id) === state.networkId }, n.name));
    load();
  });
}
