// One device: its properties and MQTT presence, a live stream of its notifications and commands over
// the WebSocket API, a form that sends a command (over the same WebSocket) and shows its status and
// result when the device answers, and the stored history within a time range.

import { describe, get } from './api.js';
import { clear, errorBox, field, h, json, pager, parseObject, table, time, toast } from './dom.js';
import { editDevice, groups, presenceBadge, presenceFrom, presenceOf, setBlocked } from './devices.js';
import { Live } from './live.js';

/** Live events kept on the page. */
const STREAM_LIMIT = 200;
const HISTORY_PAGE = 20;
/** How far back the live stream starts. */
const REPLAY_MS = 10 * 60_000;

export function render(main, deviceId) {
  const path = `/device/${encodeURIComponent(deviceId)}`;
  const error = errorBox();
  const heading = h('h1', {}, deviceId);
  const props = h('dl', { class: 'props' });
  const presenceSlot = h('span', {}, '…');
  const streamState = h('span', { class: 'badge', id: 'live-state' }, 'connecting');
  const stream = h('ol', { class: 'stream', id: 'stream', 'aria-live': 'polite', 'aria-relevant': 'additions' });
  const sent = h('div', { id: 'sent-commands' });
  const sentCommands = new Map();
  let device = null;
  let known = null;

  main.append(
    h('p', { class: 'crumbs' }, h('a', { href: '#/devices' }, 'Devices'), ' / ', h('code', {}, deviceId)),
    heading,
    error);

  const live = new Live(onPush, (text) => {
    streamState.textContent = text;
    streamState.className = `badge ${text === 'live' ? 'ok' : ''}`;
  });

  function entry(kind, item, detail) {
    const li = h('li', { class: `event ${kind}` },
      h('span', { class: 'event-kind' }, kind),
      h('span', { class: 'event-name' }, item.notification ?? item.command),
      h('time', { datetime: item.timestamp }, time(kind === 'update' ? item.lastUpdated : item.timestamp)),
      detail ? h('code', { class: 'event-detail' }, detail) : null);
    stream.prepend(li);
    while (stream.children.length > STREAM_LIMIT) stream.lastChild.remove();
    stream.parentElement?.querySelector('.empty')?.remove();
  }

  function onPush(message) {
    if (message.action === 'notification/insert') {
      const n = message.notification;
      entry('notification', n, json(n.parameters));
      if (n.notification === '$device-connected' || n.notification === '$device-disconnected') {
        clear(presenceSlot).append(presenceBadge(presenceFrom(n)));
      }
    } else if (message.action === 'command/insert') {
      entry('command', message.command, json(message.command.parameters));
    } else if (message.action === 'command/update') {
      const c = message.command;
      entry('update', c, `status: ${c.status ?? ''}  result: ${json(c.result)}`);
      if (sentCommands.has(c.id)) {
        sentCommands.set(c.id, c);
        drawSent();
      }
    }
  }

  function drawSent() {
    const rows = [...sentCommands.values()].reverse();
    clear(sent).append(rows.length ? table([
      { label: 'Id', cell: (c) => String(c.id) },
      { label: 'Command', cell: (c) => c.command },
      { label: 'Sent', cell: (c) => time(c.timestamp) },
      { label: 'Status', cell: (c) => h('span', { class: `badge ${c.status ? 'ok' : 'muted'}`, 'data-command-id': c.id }, c.status ?? 'waiting for the device') },
      { label: 'Result', cell: (c) => (c.result ? h('code', { class: 'clip' }, json(c.result)) : '') },
    ], rows, { caption: 'Commands sent from this page' }) : null);
  }

  function commandForm() {
    const name = h('input', { name: 'command', required: true, maxlength: 128, placeholder: 'e.g. set-interval', autocapitalize: 'none' });
    const parameters = h('textarea', { name: 'parameters', rows: 2, spellcheck: 'false', placeholder: '{"seconds": 60}' });
    const lifetime = h('input', { name: 'lifetime', type: 'number', min: 0, placeholder: 'seconds (optional)' });
    const formError = errorBox();
    const send = h('button', { type: 'submit' }, 'Send command');
    return h('form', {
      class: 'card',
      id: 'command-form',
      onsubmit: async (event) => {
        event.preventDefault();
        formError.show('');
        send.disabled = true;
        try {
          const command = { command: name.value.trim(), parameters: parseObject(parameters.value, 'Parameters') };
          if (lifetime.value) command.lifetime = Number(lifetime.value);
          const answer = await live.request('command/insert', { deviceId, command });
          sentCommands.set(answer.command.id, { ...command, ...answer.command, status: null, result: null });
          drawSent();
          toast(`Command ${answer.command.id} sent`);
        } catch (e) {
          formError.show(describe(e));
        } finally {
          send.disabled = false;
        }
      },
    },
    h('h2', {}, 'Send a command'),
    h('div', { class: 'grid-2' }, field('Command', name), field('Lifetime', lifetime, 'For devices with a persistent MQTT session.')),
    field('Parameters (JSON object, optional)', parameters),
    formError,
    h('div', { class: 'actions' }, send),
    sent);
  }

  function history() {
    const state = { skip: 0, take: HISTORY_PAGE, total: 0, kind: 'notification' };
    const kind = h('select', { 'aria-label': 'History of' }, h('option', { value: 'notification' }, 'Notifications'), h('option', { value: 'command' }, 'Commands'));
    const start = h('input', { type: 'datetime-local', step: 1 });
    const end = h('input', { type: 'datetime-local', step: 1 });
    const names = h('input', { type: 'search', placeholder: 'names, comma-separated' });
    const out = h('div', { id: 'history' });
    const historyError = errorBox();
    const iso = (input) => (input.value ? new Date(input.value).toISOString() : undefined);
    async function load() {
      historyError.show('');
      try {
        const query = { start: iso(start), end: iso(end), names: names.value.trim() || undefined, sortOrder: 'DESC', take: state.take + 1, skip: state.skip };
        const rows = await get(`${path}/${state.kind}`, query);
        // The API has no count for history: one row more than a page tells whether a next page exists.
        state.total = state.skip + rows.length;
        const shown = rows.slice(0, state.take);
        const columns = state.kind === 'notification'
          ? [
            { label: 'Time', cell: (n) => time(n.timestamp) },
            { label: 'Notification', cell: (n) => n.notification },
            { label: 'Parameters', cell: (n) => (n.parameters ? h('code', { class: 'clip' }, json(n.parameters)) : '') },
          ]
          : [
            { label: 'Time', cell: (c) => time(c.timestamp) },
            { label: 'Command', cell: (c) => c.command },
            { label: 'Parameters', cell: (c) => (c.parameters ? h('code', { class: 'clip' }, json(c.parameters)) : '') },
            { label: 'Status', cell: (c) => c.status ?? '' },
            { label: 'Result', cell: (c) => (c.result ? h('code', { class: 'clip' }, json(c.result)) : '') },
            { label: 'Updated', cell: (c) => time(c.lastUpdated) },
          ];
        clear(out).append(
          table(columns, shown, { empty: 'Nothing in this range.', caption: 'History' }),
          pager({ ...state, total: rows.length > state.take ? state.skip + state.take + 1 : state.skip + shown.length }, (skip) => {
            state.skip = skip;
            load();
          }));
      } catch (e) {
        historyError.show(describe(e));
      }
    }
    const form = h('form', {
      class: 'toolbar',
      onsubmit: (event) => {
        event.preventDefault();
        state.kind = kind.value;
        state.skip = 0;
        load();
      },
    }, kind, field('From', start), field('Until', end), field('Names', names), h('button', { type: 'submit' }, 'Show'));
    load();
    return h('section', { class: 'card' }, h('h2', {}, 'History'), form, historyError, out);
  }

  function drawProps() {
    clear(props).append(
      h('dt', {}, 'Name'), h('dd', { id: 'device-name' }, device.name),
      h('dt', {}, 'Id'), h('dd', {}, h('code', {}, device.id)),
      h('dt', {}, 'Network'), h('dd', {}, known?.network.get(device.networkId)?.name ?? String(device.networkId ?? '')),
      h('dt', {}, 'Device type'), h('dd', {}, known?.deviceType.get(device.deviceTypeId)?.name ?? String(device.deviceTypeId ?? '')),
      h('dt', {}, 'Blocked'), h('dd', {}, device.isBlocked ? 'yes' : 'no'),
      h('dt', {}, 'MQTT'), h('dd', {}, presenceSlot),
      h('dt', {}, 'Data'), h('dd', {}, h('code', {}, json(device.data))));
    heading.textContent = device.name;
  }

  async function reloadDevice() {
    device = await get(path);
    drawProps();
  }

  (async () => {
    try {
      [device, known] = await Promise.all([get(path), groups()]);
    } catch (e) {
      live.close();
      error.show(e.status === 403
        ? 'You may not see this device (it is not in one of your networks), or it does not exist.'
        : describe(e));
      return;
    }
    drawProps();
    presenceOf(deviceId).then((p) => clear(presenceSlot).append(presenceBadge(p))).catch(() => clear(presenceSlot).append('—'));
    main.append(
      h('section', { class: 'card' },
        props,
        h('div', { class: 'actions' },
          h('button', { type: 'button', class: 'secondary', onclick: async () => (await editDevice(device, known)) && (toast('Device saved'), reloadDevice()) }, 'Edit'),
          h('button', {
            type: 'button',
            class: 'secondary',
            onclick: async () => {
              try {
                await setBlocked(device, !device.isBlocked);
                await reloadDevice();
              } catch (e) {
                error.show(describe(e));
              }
            },
          }, 'Block / unblock'))),
      h('div', { class: 'columns' },
        h('section', { class: 'card' },
          h('h2', {}, 'Live ', streamState),
          h('p', { class: 'muted small empty' }, 'Notifications and commands of this device appear here as they arrive.'),
          stream),
        commandForm()),
      history());
    live.connect();
    // The device's notifications, its new commands and updates of its commands: the last few
    // minutes replayed (so the stream has context), then live.
    const since = new Date(Date.now() - REPLAY_MS).toISOString();
    try {
      await live.subscribe('notification/subscribe', { deviceId }, since);
      await live.subscribe('command/subscribe', { deviceId }, since);
      await live.subscribe('command/subscribe', { deviceId, returnUpdatedCommands: true }, since);
    } catch (e) {
      error.show(`Live updates are not available: ${describe(e)}`);
    }
  })();

  return () => live.close();
}
