// A WebSocket session with the hub's WebSocket API: authenticates with the access token (again after
// every refresh), answers requests by requestId, hands pushes to `onPush`, and reconnects after a
// drop, resubscribing from the last message seen so nothing is missed or repeated.

import { WEBSOCKET_URL, accessToken, onSession } from './api.js';

export class Live {
  /** `onPush(message)` gets every push; `onState(text)` the connection state for the page. */
  constructor(onPush, onState) {
    this.onPush = onPush;
    this.onState = onState;
    this.pending = new Map();
    this.nextId = 1;
    this.subscriptions = []; // {action, fields, cursor}
    this.closed = false;
    this.retry = 1000;
    this.lastToken = null;
    this.unlisten = onSession((s) => {
      if (!s) this.close();
      else if (this.ready && s.accessToken !== this.lastToken) this.authenticate().catch(() => {});
    });
  }

  connect() {
    this.onState('connecting');
    this.generation = (this.generation || 0) + 1;
    const ws = new WebSocket(WEBSOCKET_URL);
    this.ws = ws;
    ws.onopen = async () => {
      try {
        await this.authenticate();
        this.retry = 1000;
        for (const sub of this.subscriptions) {
          if (sub.generation !== this.generation) await this.start(sub);
        }
        this.onState('live');
      } catch (e) {
        this.onState(`error: ${e.message}`);
      }
    };
    ws.onmessage = (event) => this.receive(event.data);
    ws.onclose = () => {
      this.ready = false;
      for (const { reject } of this.pending.values()) reject(new Error('connection closed'));
      this.pending.clear();
      if (this.closed) return;
      this.onState('reconnecting');
      setTimeout(() => !this.closed && this.connect(), this.retry);
      this.retry = Math.min(this.retry * 2, 30_000);
    };
  }

  async authenticate() {
    const token = await accessToken();
    this.lastToken = token;
    this.ready = true;
    await this.request('authenticate', { token });
  }

  receive(text) {
    let message;
    try {
      message = JSON.parse(text);
    } catch {
      return;
    }
    if (message.subscriptionId !== undefined && message.requestId === undefined) {
      const sub = this.subscriptions.find((s) => s.id === message.subscriptionId);
      const item = message.notification || message.command;
      if (sub && item) sub.cursor = message.action === 'command/update' ? item.lastUpdated : item.timestamp;
      this.onPush(message);
      return;
    }
    const waiter = this.pending.get(message.requestId);
    if (!waiter) return;
    this.pending.delete(message.requestId);
    if (message.status === 'success') waiter.resolve(message);
    else waiter.reject(Object.assign(new Error(message.error || 'request failed'), { status: message.code }));
  }

  /** Sends one request and resolves with the success response (rejects with the hub's error). */
  request(action, fields = {}) {
    return new Promise((resolve, reject) => {
      if (!this.ws || this.ws.readyState !== WebSocket.OPEN) {
        reject(new Error('The live connection is not open'));
        return;
      }
      const requestId = this.nextId++;
      this.pending.set(requestId, { resolve, reject });
      this.ws.send(JSON.stringify({ action, requestId, ...fields }));
    });
  }

  /** Subscribes now and after every reconnect (from the last message seen, or from `since`). */
  async subscribe(action, fields, since) {
    const sub = { action, fields, cursor: since || null, id: null, generation: null };
    this.subscriptions.push(sub);
    if (this.ws && this.ws.readyState === WebSocket.OPEN && this.ready) await this.start(sub);
    return sub;
  }

  async start(sub) {
    sub.generation = this.generation;
    const fields = { ...sub.fields };
    if (sub.cursor) fields.timestamp = sub.cursor;
    const answer = await this.request(sub.action, fields);
    sub.id = answer.subscriptionId;
  }

  close() {
    this.closed = true;
    this.unlisten();
    if (this.ws) this.ws.close();
  }
}
