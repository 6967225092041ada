// Overview: counts of devices, networks and users (what the logged-in user may see), connected MQTT
// sessions and messages per second from the hub's own statistics (`GET /info/cache`), refreshed live.

import { describe, get, parseCacheStats } from './api.js';
import { h } from './dom.js';

/** How often the statistics are read. */
const PERIOD_MS = 2000;

function stat(label, id) {
  const value = h('span', { class: 'stat-value', id }, '…');
  return [h('div', { class: 'card stat' }, h('span', { class: 'stat-label' }, label), value), value];
}

export function render(main) {
  const [devicesCard, devicesValue] = stat('Devices', 'stat-devices');
  const [networksCard, networksValue] = stat('Networks', 'stat-networks');
  const [usersCard, usersValue] = stat('Users', 'stat-users');
  const [mqttCard, mqttValue] = stat('Connected MQTT sessions', 'stat-mqtt');
  const [rateCard, rateValue] = stat('Messages per second', 'stat-rate');
  const [subsCard, subsValue] = stat('Live subscriptions', 'stat-subscriptions');
  const note = h('p', { class: 'muted small' });
  main.append(
    h('h1', {}, 'Overview'),
    h('div', { class: 'stats' }, devicesCard, networksCard, usersCard, mqttCard, rateCard, subsCard),
    note);

  const count = async (path, target) => {
    try {
      target.textContent = String((await get(path)).count);
    } catch (e) {
      target.textContent = '—';
      target.title = describe(e);
    }
  };
  count('/device/count', devicesValue);
  count('/network/count', networksValue);
  count('/user/count', usersValue);

  let previous = null;
  let timer = null;
  let stopped = false;
  const sample = async () => {
    try {
      const info = await get('/info/cache');
      const stats = parseCacheStats(info.cacheStats);
      const at = Date.parse(`${info.serverTimestamp}Z`);
      mqttValue.textContent = stats.mqttConnections ?? '—';
      subsValue.textContent = stats.subscriptions ?? '—';
      if (previous && stats.messagesWritten !== null && at > previous.at) {
        const rate = (stats.messagesWritten - previous.written) / ((at - previous.at) / 1000);
        rateValue.textContent = rate >= 10 ? rate.toFixed(0) : rate.toFixed(1);
      }
      previous = { at, written: stats.messagesWritten };
      note.textContent = `Figures of hub instance ${stats.node ?? '?'}, updated every ${PERIOD_MS / 1000} s. Counts show what your account may see.`;
    } catch (e) {
      note.textContent = describe(e);
    }
    if (!stopped) timer = setTimeout(sample, PERIOD_MS);
  };
  sample();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}
