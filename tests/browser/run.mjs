// End-to-end tests of the admin console in real headless Chromium (Debian's /usr/bin/chromium driven
// by playwright-core). Started by tests/api/console.rs against a hub it runs on port 0:
//
//   HIVEHUB_URL          http://127.0.0.1:PORT (the hub's HTTP listener)
//   HIVEHUB_MQTT         127.0.0.1:PORT (the embedded MQTT broker)
//   HIVEHUB_LOGIN / HIVEHUB_PASSWORD   an admin user's credentials
//   HIVEHUB_SCREENSHOTS  folder for one screenshot per page (light, dark, phone width)
//   CHROMIUM             the browser (default /usr/bin/chromium)
//
// Exits 0 when every step passed; prints each step as it goes.

import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { chromium } from 'playwright-core';
import { MqttClient } from './mqtt.mjs';

const env = (name, fallback) => {
  const value = process.env[name] ?? fallback;
  if (value === undefined) throw new Error(`${name} is not set`);
  return value;
};
const HUB = env('HIVEHUB_URL').replace(/\/$/, '');
const REST = `${HUB}${env('HIVEHUB_REST_PREFIX', '/api/rest')}`;
const [MQTT_HOST, MQTT_PORT] = env('HIVEHUB_MQTT').split(/:(?=\d+$)/);
const LOGIN = env('HIVEHUB_LOGIN');
const PASSWORD = env('HIVEHUB_PASSWORD');
const SHOTS = env('HIVEHUB_SCREENSHOTS');
const XSS = '<img src=x onerror=alert(1)>';
const TIMEOUT = 30_000;
mkdirSync(SHOTS, { recursive: true });

function assert(condition, message) {
  if (!condition) throw new Error(`assertion failed: ${message}`);
}

// --- REST helpers for setting up and checking state outside the browser -------------------------
// `admin` stands for an admin access token, fetched again when it may be near its end (the test hub
// gives access tokens a short lifetime, to see the console refresh its own).
const admin = Symbol('admin');
let adminToken = { value: null, at: 0 };
async function adminAuth() {
  if (Date.now() - adminToken.at > 20_000) {
    const tokens = await rest('POST', '/token', null, { login: LOGIN, password: PASSWORD });
    adminToken = { value: tokens.accessToken, at: Date.now() };
  }
  return adminToken.value;
}

async function rest(method, path, token, body) {
  if (token === admin) token = await adminAuth();
  const response = await fetch(`${REST}${path}`, {
    method,
    headers: { 'Content-Type': 'application/json', ...(token ? { Authorization: `Bearer ${token}` } : {}) },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  if (!response.ok) throw new Error(`${method} ${path}: ${response.status} ${text}`);
  return text ? JSON.parse(text) : null;
}

// --- Browser ---------------------------------------------------------------------------------------
const browser = await chromium.launch({
  executablePath: env('CHROMIUM', '/usr/bin/chromium'),
  headless: true,
  chromiumSandbox: false,
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage'],
});

const dialogs = [];
const problems = [];
async function newPage({ colorScheme = 'light', phone = false } = {}) {
  const context = await browser.newContext({
    colorScheme,
    viewport: phone ? { width: 390, height: 844 } : { width: 1280, height: 860 },
    deviceScaleFactor: 1,
    isMobile: phone,
    hasTouch: phone,
  });
  const page = await context.newPage();
  page.setDefaultTimeout(TIMEOUT);
  page.on('dialog', async (dialog) => {
    dialogs.push(dialog.message());
    await dialog.dismiss();
  });
  page.on('pageerror', (error) => problems.push(`page error: ${error.message}`));
  page.on('console', (message) => {
    // CSP violations and script errors are reported on the console.
    if (message.type() === 'error' && !/Failed to load resource/.test(message.text())) problems.push(`console: ${message.text()}`);
  });
  return page;
}

async function shot(page, name) {
  await page.evaluate(() => window.scrollTo(0, 0)); // the sticky bar where it belongs
  await page.waitForTimeout(300); // let transitions settle for the picture
  await page.screenshot({ path: join(SHOTS, `${name}.png`), fullPage: true });
}

async function logIn(page, login, password) {
  await page.goto(`${HUB}/admin/`);
  await page.fill('input[name=login]', login);
  await page.fill('input[name=password]', password);
  await page.click('form.login button[type=submit]');
  await page.locator('#stat-devices').filter({ hasNotText: '…' }).waitFor();
}

let passed = 0;
async function step(name, body) {
  process.stdout.write(`console: ${name} ... `);
  await body();
  passed += 1;
  process.stdout.write('ok\n');
}

const run = Date.now().toString(36);
const greenhouse = `Greenhouse ${run}`;
const field = `Field ${run}`;
let deviceToken = null;
let device = null;

const page = await newPage();

try {
  await step('GET / redirects to the console, served with a strict Content-Security-Policy', async () => {
    const response = await page.goto(`${HUB}/`);
    assert(page.url() === `${HUB}/admin/`, `landed on ${page.url()}`);
    const csp = response.headers()['content-security-policy'] || '';
    assert(csp.includes("script-src 'self'") && csp.includes("style-src 'self'") && !csp.includes('unsafe-inline'), csp);
    assert(/connect-src 'self' ws:\/\/\S+ wss:\/\//.test(csp), csp);
  });

  await step('a wrong password shows an error', async () => {
    await page.fill('input[name=login]', LOGIN);
    await page.fill('input[name=password]', 'not-the-password');
    await page.click('form.login button[type=submit]');
    await page.getByRole('alert').filter({ hasText: 'Wrong login or password' }).waitFor();
    await shot(page, 'login-error-light');
  });

  await step('log in; the overview shows counts and the hub statistics', async () => {
    await page.fill('input[name=password]', PASSWORD);
    await page.click('form.login button[type=submit]');
    await page.locator('#stat-devices').filter({ hasNotText: '…' }).waitFor();
    await page.locator('#stat-mqtt').filter({ hasText: /^\d+$/ }).waitFor();
    await page.locator('#stat-rate').filter({ hasText: /^\d/ }).waitFor();
    const token = await page.evaluate(() => sessionStorage.getItem('hivehub.console.session'));
    assert(token && !page.url().includes('eyJ'), 'tokens are kept in sessionStorage, not in the URL');
    await shot(page, 'overview-light');
  });

  await step('create a network', async () => {
    await page.click('nav a[href="#/networks"]');
    await page.getByRole('button', { name: 'New network' }).click();
    await page.fill('dialog input[name=name]', greenhouse);
    await page.fill('dialog input[name=description]', 'Sensors under glass');
    await page.click('dialog button[type=submit]');
    await page.locator('td', { hasText: greenhouse }).waitFor();
    await shot(page, 'networks-light');
  });

  await step('create a device in it', async () => {
    await page.click('nav a[href="#/devices"]');
    await page.getByRole('button', { name: 'New device' }).click();
    await page.fill('dialog input[name=id]', `thermo-${run}`);
    await page.fill('dialog input[name=name]', 'Thermometer');
    await page.selectOption('dialog select[name=networkId]', { label: greenhouse });
    await page.selectOption('dialog select[name=deviceTypeId]', { label: 'Thermostats' });
    await page.fill('dialog textarea[name=data]', '{"room": "north"}');
    await page.click('dialog button[type=submit]');
    await page.locator('a.device-link', { hasText: 'Thermometer' }).waitFor();
    device = await rest('GET', `/device/thermo-${run}`, admin);
    assert(device.name === 'Thermometer' && device.data.room === 'north', JSON.stringify(device));
  });

  await step('a device named like markup renders as text', async () => {
    await page.getByRole('button', { name: 'New device' }).click();
    await page.fill('dialog input[name=id]', `xss-${run}`);
    await page.fill('dialog input[name=name]', XSS);
    await page.click('dialog button[type=submit]');
    const link = page.locator('a.device-link', { hasText: XSS });
    await link.waitFor();
    assert((await link.textContent()) === XSS, 'the name is shown literally');
    assert((await page.locator('img[src="x"]').count()) === 0, 'no <img> element was created');
    await shot(page, 'devices-light');
    await link.click();
    await page.locator('#device-name').waitFor();
    assert((await page.locator('h1').textContent()) === XSS, 'the heading shows the name literally');
    assert((await page.locator('img[src="x"]').count()) === 0, 'no <img> element on the device page');
    assert(dialogs.length === 0, `no dialog fired: ${dialogs}`);
  });

  await step('block and unblock a device (its data kept)', async () => {
    await page.click('nav a[href="#/devices"]');
    await page.getByRole('button', { name: 'Block Thermometer' }).click();
    await page.locator('tr', { hasText: 'Thermometer' }).locator('.badge.warn', { hasText: 'blocked' }).waitFor();
    let d = await rest('GET', `/device/thermo-${run}`, admin);
    assert(d.isBlocked === true && d.data.room === 'north', JSON.stringify(d));
    await page.getByRole('button', { name: 'Unblock Thermometer' }).click();
    await page.getByRole('button', { name: 'Block Thermometer' }).waitFor();
    d = await rest('GET', `/device/thermo-${run}`, admin);
    assert(d.isBlocked === false && d.data.room === 'north', JSON.stringify(d));
  });

  await step('create a token for the device, shown once with an MQTT example', async () => {
    await page.click('nav a[href="#/tokens"]');
    await page.selectOption('select[name=kind]', 'device');
    await page.selectOption('select[name=deviceId]', `thermo-${run}`);
    await page.getByRole('button', { name: 'Create token' }).click();
    await page.locator('#access-token').waitFor();
    deviceToken = await page.locator('#access-token').inputValue();
    const example = await page.locator('#mqtt-example').inputValue();
    assert(deviceToken.startsWith('eyJ'), 'an access token');
    assert(example.includes('mosquitto_sub') && example.includes(`-i 'thermo-${run}'`) && example.includes(deviceToken), example);
    assert(example.includes(`dh/command/${device.networkId}/${device.deviceTypeId}/thermo-${run}/#`), example);
    await shot(page, 'tokens-light');
  });

  const topic = (kind, name) => `dh/${kind}/${device.networkId}/${device.deviceTypeId}/thermo-${run}/${name}`;
  let mqttDevice = null;
  const received = [];
  await step('device page: live presence and a notification inserted over REST appear', async () => {
    await page.goto(`${HUB}/admin/#/device/thermo-${run}`);
    await page.locator('#live-state', { hasText: 'live' }).waitFor();
    // The simulated device connects with its id as client id and the console-made token as password.
    mqttDevice = await MqttClient.connect({
      host: MQTT_HOST,
      port: Number(MQTT_PORT),
      clientId: `thermo-${run}`,
      username: 'device',
      password: deviceToken,
      onMessage: async (t, text) => {
        const push = JSON.parse(text);
        received.push(push);
        if (push.action === 'command/insert') {
          const c = push.command;
          await mqttDevice.publish(topic('command_update', c.command), JSON.stringify({ id: c.id, status: 'done', result: { ok: true, echo: c.parameters } }));
        }
      },
    });
    assert((await mqttDevice.subscribe(`dh/command/+/+/thermo-${run}/#`)) !== 0x80, 'the device token may subscribe to its commands');
    await page.locator('#stream .event-name', { hasText: '$device-connected' }).waitFor();
    await page.locator('.props .badge.ok', { hasText: 'connected' }).waitFor();
    await rest('POST', `/device/thermo-${run}/notification`, admin, { notification: 'temperature', parameters: { celsius: 21.5 } });
    await page.locator('#stream .event', { hasText: 'temperature' }).locator('.event-detail', { hasText: '21.5' }).waitFor();
  });

  await step('a command sent from the page reaches the MQTT device; its answer shows up', async () => {
    await page.fill('#command-form input[name=command]', 'blink');
    await page.fill('#command-form textarea[name=parameters]', '{"times": 3}');
    await page.click('#command-form button[type=submit]');
    await page.locator('#sent-commands [data-command-id]', { hasText: 'done' }).waitFor();
    await page.locator('#sent-commands td', { hasText: '"ok":true' }).waitFor();
    await page.locator('#stream .event.update', { hasText: 'blink' }).waitFor();
    const insert = received.find((m) => m.action === 'command/insert');
    assert(insert && insert.command.command === 'blink' && insert.command.parameters.times === 3, JSON.stringify(received));
    await shot(page, 'device-light');
  });

  await step('history with a time range', async () => {
    const from = new Date(Date.now() - 3600_000);
    const local = new Date(from.getTime() - from.getTimezoneOffset() * 60_000).toISOString().slice(0, 19);
    await page.locator('#history').locator('xpath=..').locator('input[type=datetime-local]').first().fill(local);
    await page.selectOption('select[aria-label="History of"]', 'command');
    await page.getByRole('button', { name: 'Show' }).click();
    await page.locator('#history td', { hasText: 'blink' }).waitFor();
    await page.locator('#history td', { hasText: 'done' }).first().waitFor();
    await page.selectOption('select[aria-label="History of"]', 'notification');
    await page.getByRole('button', { name: 'Show' }).click();
    await page.locator('#history td', { hasText: 'temperature' }).waitFor();
  });

  // Another network with a device, for the client user.
  const fieldId = (await rest('POST', '/network', admin, { name: field, description: 'Outdoor' })).id;
  await rest('PUT', `/device/field-${run}`, admin, { name: 'Field probe', networkId: fieldId });
  const bob = await rest('POST', '/user', admin, { login: `bob-${run}`, password: 'bob-password', role: 1 });

  await step('users: create a client user and assign it a network', async () => {
    await page.click('nav a[href="#/users"]');
    await page.getByRole('button', { name: 'New user' }).click();
    await page.fill('dialog input[name=login]', `alice-${run}`);
    await page.fill('dialog input[name=password]', 'alice-password');
    await page.click('dialog button[type=submit]');
    await page.locator('#user-networks').waitFor();
    await page.locator('#user-networks label', { hasText: field }).locator('input').check();
    await page.locator('.toast.show', { hasText: 'assigned' }).waitFor();
    await shot(page, 'user-light');
  });

  await step('users: lock a user and change a role', async () => {
    await page.click('nav a[href="#/users"]');
    await page.getByRole('button', { name: `Lock bob-${run}` }).click();
    await page.getByRole('button', { name: `Unlock bob-${run}` }).waitFor();
    assert((await rest('GET', `/user/${bob.id}`, admin)).status === 1, 'bob is locked');
    await page.selectOption(`select[aria-label="Role of bob-${run}"]`, '0');
    await page.locator('.toast.show', { hasText: 'Role changed' }).waitFor();
    assert((await rest('GET', `/user/${bob.id}`, admin)).role === 0, 'bob is an admin');
    await shot(page, 'users-light');
  });

  await step('delete a network with devices: refused first, then forced', async () => {
    const doomed = (await rest('POST', '/network', admin, { name: `Doomed ${run}` })).id;
    await rest('PUT', `/device/doomed-${run}`, admin, { name: 'Doomed device', networkId: doomed });
    await page.click('nav a[href="#/networks"]');
    await page.getByRole('button', { name: `Delete Doomed ${run}` }).click();
    await page.click('dialog button.danger');
    await page.locator('dialog', { hasText: `doomed-${run}` }).waitFor();
    await page.click('dialog button.danger');
    await page.locator('td', { hasText: `Doomed ${run}` }).waitFor({ state: 'detached' });
    const gone = await fetch(`${REST}/device/doomed-${run}`, { headers: { Authorization: `Bearer ${await adminAuth()}` } });
    assert(gone.status === 404, `the device went with the network (${gone.status})`);
  });

  await step('device types page', async () => {
    await page.click('nav a[href="#/devicetypes"]');
    await page.getByRole('cell', { name: 'Thermostats', exact: true }).waitFor();
    await shot(page, 'devicetypes-light');
  });

  await step('the access token is refreshed before it expires', async () => {
    const before = await page.evaluate(() => JSON.parse(sessionStorage.getItem('hivehub.console.session')).accessToken);
    await page.waitForFunction((old) => JSON.parse(sessionStorage.getItem('hivehub.console.session')).accessToken !== old, before, { timeout: 60_000 });
  });

  await step('log out', async () => {
    await page.click('#logout');
    await page.locator('form.login').waitFor();
    assert((await page.evaluate(() => sessionStorage.length)) === 0, 'no tokens left in sessionStorage');
  });

  await step('a client user sees only its networks’ devices (dark, phone width)', async () => {
    const phone = await newPage({ colorScheme: 'dark', phone: true });
    await logIn(phone, `alice-${run}`, 'alice-password');
    await shot(phone, 'overview-dark-phone');
    await phone.goto(`${HUB}/admin/#/devices`);
    await phone.locator('a.device-link', { hasText: 'Field probe' }).waitFor();
    assert((await phone.locator('a.device-link', { hasText: 'Thermometer' }).count()) === 0, 'another network’s device is hidden');
    assert((await phone.locator('a.device-link').count()) === 1, 'only the device of its network');
    await shot(phone, 'devices-dark-phone');
    await phone.goto(`${HUB}/admin/#/device/thermo-${run}`);
    await phone.getByRole('alert').filter({ hasText: 'You may not see this device' }).waitFor();
    await shot(phone, 'device-denied-dark-phone');
    await phone.goto(`${HUB}/admin/#/users`);
    await phone.locator('td', { hasText: `alice-${run}` }).waitFor();
    await phone.getByRole('button', { name: 'Menu' }).click();
    await phone.locator('#nav.open').waitFor();
    await shot(phone, 'users-menu-dark-phone');
    await phone.context().close();
  });

  await step('pages in dark mode and at phone width (admin)', async () => {
    const dark = await newPage({ colorScheme: 'dark' });
    await logIn(dark, LOGIN, PASSWORD);
    await shot(dark, 'overview-dark');
    await dark.goto(`${HUB}/admin/#/devices`);
    await dark.locator('a.device-link', { hasText: 'Thermometer' }).waitFor();
    await shot(dark, 'devices-dark');
    await dark.goto(`${HUB}/admin/#/device/thermo-${run}`);
    await dark.locator('#live-state', { hasText: 'live' }).waitFor();
    await dark.locator('#history td', { hasText: 'temperature' }).waitFor();
    await shot(dark, 'device-dark');
    await dark.goto(`${HUB}/admin/#/tokens`);
    await dark.locator('#token-form button[type=submit]').waitFor();
    await shot(dark, 'tokens-dark');
    await dark.context().close();

    const phone = await newPage({ phone: true });
    await logIn(phone, LOGIN, PASSWORD);
    await phone.goto(`${HUB}/admin/#/devices`);
    await phone.locator('a.device-link', { hasText: 'Thermometer' }).waitFor();
    await shot(phone, 'devices-light-phone');
    await phone.goto(`${HUB}/admin/#/device/thermo-${run}`);
    await phone.locator('#live-state', { hasText: 'live' }).waitFor();
    await shot(phone, 'device-light-phone');
    await phone.context().close();
  });

  await step('long lists page (devices of one network, 20 per page)', async () => {
    await logIn(page, LOGIN, PASSWORD);
    for (let i = 0; i < 21; i += 1) {
      await rest('PUT', `/device/bulk-${run}-${String(i).padStart(2, '0')}`, admin, { name: `Bulk ${String(i).padStart(2, '0')}`, networkId: fieldId });
    }
    await page.goto(`${HUB}/admin/#/devices?networkId=${fieldId}`);
    await page.locator('.pager span', { hasText: '1–20 of 22' }).waitFor();
    assert((await page.locator('a.device-link').count()) === 20, 'a page of 20');
    await page.getByRole('button', { name: 'Next' }).click();
    await page.locator('.pager span', { hasText: '21–22 of 22' }).waitFor();
    assert((await page.locator('a.device-link').count()) === 2, 'the rest on page 2');
    await page.getByRole('button', { name: 'Previous' }).click();
    await page.locator('.pager span', { hasText: '1–20 of 22' }).waitFor();
  });

  if (mqttDevice) mqttDevice.close();
  assert(dialogs.length === 0, `no dialog fired: ${dialogs}`);
  assert(problems.length === 0, `no script errors or CSP violations:\n${problems.join('\n')}`);
  console.log(`console browser tests ok (${passed} steps); screenshots in ${SHOTS}`);
} catch (error) {
  process.stdout.write('FAILED\n');
  console.error(error);
  if (problems.length) console.error(`page problems:\n${problems.join('\n')}`);
  await page.screenshot({ path: join(SHOTS, 'failure.png'), fullPage: true }).catch(() => {});
  await browser.close();
  process.exit(1);
}
await browser.close();
