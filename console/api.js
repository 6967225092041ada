// The REST client: where the API is (from the page's <meta> tags, filled in by the hub), the login
// session (tokens in sessionStorage, never in URLs), refreshing the access token before it expires,
// and readable errors.

const meta = (name) => document.querySelector(`meta[name="${name}"]`)?.getAttribute('content') || '';

export const REST_PREFIX = meta('hivehub-rest-prefix') || '/api/rest';
export const WEBSOCKET_URL = `${location.protocol === 'https:' ? 'wss:' : 'ws:'}//${location.host}${meta('hivehub-websocket-path') || '/api/websocket'}`;
export const MQTT_PORT = meta('hivehub-mqtt-port') || '1883';

const STORAGE_KEY = 'hivehub.console.session';
/** Refresh this long before the access token expires. */
const REFRESH_MARGIN_MS = 60_000;

/** An error answer of the API: `status` and the hub's `message`. */
export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

/** What to tell a person about a failed request. */
export function describe(error) {
  if (!(error instanceof ApiError)) return error?.message || String(error);
  switch (error.status) {
    case 0: return `The hub cannot be reached (${error.message}).`;
    case 403: return `Not allowed for your account: ${error.message}`;
    case 404: return `Not found: ${error.message}`;
    case 429: return error.message;
    case 503: return `The hub is unavailable: ${error.message}`;
    default: return error.status >= 500 ? `The hub failed: ${error.message}` : error.message;
  }
}

let session = load();
let refreshTimer = null;
let refreshing = null;
const listeners = new Set();

function load() {
  try {
    return JSON.parse(sessionStorage.getItem(STORAGE_KEY)) || null;
  } catch {
    return null;
  }
}

function save() {
  if (session) sessionStorage.setItem(STORAGE_KEY, JSON.stringify(session));
  else sessionStorage.removeItem(STORAGE_KEY);
  for (const listener of listeners) listener(session);
}

/** Called with the session whenever it changes (null: logged out). */
export function onSession(listener) {
  listeners.add(listener);
  return () => listeners.delete(listener);
}

export function currentSession() {
  return session;
}

export function isAdmin() {
  return session?.user?.role === 0;
}

/** The expiry (epoch ms) of a hub JWT: the `e` claim inside `payload`. */
export function tokenExpiry(token) {
  try {
    const part = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    const claims = JSON.parse(atob(part.padEnd(part.length + ((4 - (part.length % 4)) % 4), '=')));
    return Number(claims.payload.e) || 0;
  } catch {
    return 0;
  }
}

function scheduleRefresh() {
  clearTimeout(refreshTimer);
  if (!session) return;
  const expires = tokenExpiry(session.accessToken);
  const wait = Math.max(1000, expires - Date.now() - REFRESH_MARGIN_MS);
  // Timers are clamped to 2^31-1 ms; a long lifetime is simply rescheduled.
  refreshTimer = setTimeout(() => refresh().catch(() => {}), Math.min(wait, 2 ** 31 - 1));
}

/** A new access token from the refresh token. A refused refresh ends the session. */
export function refresh() {
  if (!session) return Promise.reject(new ApiError(401, 'Not logged in'));
  if (!refreshing) {
    refreshing = send('POST', '/token/refresh', { refreshToken: session.refreshToken }, null)
      .then((answer) => {
        session = { ...session, accessToken: answer.accessToken };
        save();
        scheduleRefresh();
        return session.accessToken;
      })
      .catch((error) => {
        if (error.status === 401 || error.status === 403) logout('Your session has ended; please log in again.');
        throw error;
      })
      .finally(() => {
        refreshing = null;
      });
  }
  return refreshing;
}

/** The access token, refreshed first when it is about to expire (a timer may have slept). */
export async function accessToken() {
  if (!session) throw new ApiError(401, 'Not logged in');
  if (tokenExpiry(session.accessToken) - Date.now() < REFRESH_MARGIN_MS / 2) await refresh();
  return session.accessToken;
}

async function send(method, path, body, token, query) {
  let url = REST_PREFIX + path;
  if (query) {
    const params = new URLSearchParams();
    for (const [k, v] of Object.entries(query)) {
      if (v !== undefined && v !== null && v !== '') params.set(k, String(v));
    }
    const text = params.toString();
    if (text) url += `?${text}`;
  }
  const headers = { Accept: 'application/json' };
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  let response;
  try {
    response = await fetch(url, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), cache: 'no-store' });
  } catch (e) {
    throw new ApiError(0, e.message);
  }
  const text = await response.text();
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = text;
    }
  }
  if (!response.ok) {
    const message = (data && typeof data === 'object' && data.message) || response.statusText || `HTTP ${response.status}`;
    throw new ApiError(response.status, message);
  }
  return data;
}

/** An authenticated request; one retry after a refresh when the hub says the token expired. */
export async function api(method, path, { body, query } = {}) {
  const token = await accessToken();
  try {
    return await send(method, path, body, token, query);
  } catch (error) {
    if (error.status === 401 && /expired/i.test(error.message)) {
      return send(method, path, body, await refresh(), query);
    }
    if (error.status === 401) logout('Your session has ended; please log in again.');
    throw error;
  }
}

export const get = (path, query) => api('GET', path, { query });
export const post = (path, body, query) => api('POST', path, { body, query });
export const put = (path, body, query) => api('PUT', path, { body: body ?? {}, query });
export const del = (path, query) => api('DELETE', path, { query });

/** Logs in with login/password and loads the current user. */
export async function login(loginName, password) {
  const tokens = await send('POST', '/token', { login: loginName, password }, null);
  session = { accessToken: tokens.accessToken, refreshToken: tokens.refreshToken, user: null };
  try {
    session.user = await send('GET', '/user/current', undefined, tokens.accessToken);
  } catch (error) {
    session = null;
    throw error;
  }
  save();
  scheduleRefresh();
  return session;
}

/** Forgets the tokens (the hub keeps no server-side session to end). */
export function logout(reason) {
  clearTimeout(refreshTimer);
  session = null;
  logout.reason = reason || '';
  save();
}

// A session restored after a page reload: keep it fresh.
if (session) scheduleRefresh();

/** Every page of a list: `fetchPage(skip, take)` until a short page (for select boxes). */
export async function all(path, query = {}) {
  const take = 1000;
  const out = [];
  for (let skip = 0; ; skip += take) {
    const page = await get(path, { ...query, take, skip });
    out.push(...page);
    if (page.length < take) return out;
  }
}

/** The `cacheStats` line of `GET /info/cache` as numbers (absent ones null). */
export function parseCacheStats(text) {
  const number = (re) => {
    const m = re.exec(text || '');
    return m ? Number(m[1]) : null;
  };
  return {
    subscriptions: number(/(\d+) live subscriptions/),
    mqttConnections: number(/(\d+) MQTT connections/),
    droppedPublishes: number(/(\d+) MQTT publishes dropped/),
    messagesWritten: number(/(\d+) messages written/),
    node: /node (\S+)/.exec(text || '')?.[1] || null,
  };
}
