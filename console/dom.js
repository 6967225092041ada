// DOM helpers. Every value from the API reaches the page as text: elements are built with
// createElement and text nodes (never innerHTML), so a device named `<img src=x onerror=...>` stays text.

/** Builds an element: `props` are attributes (`class`, `text`, `value`, `checked`, `on<event>` handlers). */
export function h(tag, props, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith('on') && typeof value === 'function') el.addEventListener(key.slice(2), value);
    else if (key === 'class') el.className = value;
    else if (key === 'text') el.textContent = String(value);
    else if (key === 'value') el.value = String(value);
    else if (key === 'checked') el.checked = true;
    else if (key === 'selected') el.selected = true;
    else el.setAttribute(key, value === true ? '' : String(value));
  }
  add(el, children);
  return el;
}

/** Appends children: nodes as they are, anything else as text. */
export function add(el, children) {
  for (const child of [children].flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

export function clear(el) {
  while (el.firstChild) el.removeChild(el.firstChild);
  return el;
}

/** An API timestamp (UTC, no zone) in the browser's local time. */
export function time(ts) {
  if (!ts) return '';
  const d = new Date(/[zZ]|[+-]\d\d:?\d\d$/.test(ts) ? ts : `${ts}Z`);
  return Number.isNaN(d.getTime()) ? String(ts) : d.toLocaleString();
}

/** JSON for display (compact, one line). */
export function json(value) {
  if (value === null || value === undefined) return '';
  return JSON.stringify(value);
}

/**
 * A table: `columns` = [{label, cell: row => node or text}]. On narrow screens the stylesheet shows
 * each row as a card, with the column label from `data-label` before each cell.
 */
export function table(columns, rows, { empty = 'Nothing here yet.', caption } = {}) {
  if (!rows.length) return h('p', { class: 'empty' }, empty);
  return h('div', { class: 'table-wrap' },
    h('table', {},
      caption ? h('caption', { class: 'visually-hidden' }, caption) : null,
      h('thead', {}, h('tr', {}, columns.map((c) => h('th', { scope: 'col' }, c.label)))),
      h('tbody', {}, rows.map((row) => h('tr', {},
        columns.map((c) => h('td', { 'data-label': c.label }, c.cell(row))))))));
}

/** A labelled form field; `input` gets an id so the label points at it. */
let fieldSeq = 0;
export function field(label, input, hint) {
  if (!input.id) input.id = `f${++fieldSeq}`;
  return h('div', { class: 'field' },
    h('label', { for: input.id }, label),
    input,
    hint ? h('small', { class: 'hint' }, hint) : null);
}

/** A box for an error message of a form or a page (role=alert: read out when it appears). */
export function errorBox() {
  const box = h('p', { class: 'error', role: 'alert', hidden: true });
  box.show = (message) => {
    box.textContent = message || '';
    box.hidden = !message;
  };
  return box;
}

/** Paging controls: `state` = {skip, take, total}; `go(skip)` loads another page. */
export function pager(state, go) {
  const { skip, take, total } = state;
  const from = total === 0 ? 0 : skip + 1;
  const to = Math.min(skip + take, total);
  return h('div', { class: 'pager' },
    h('button', { type: 'button', class: 'secondary', disabled: skip <= 0, onclick: () => go(Math.max(0, skip - take)) }, 'Previous'),
    h('span', { 'aria-live': 'polite' }, `${from}–${to} of ${total}`),
    h('button', { type: 'button', class: 'secondary', disabled: skip + take >= total, onclick: () => go(skip + take) }, 'Next'));
}

/**
 * A modal dialog (<dialog>, so focus stays inside and Escape closes it). `build(close)` returns the
 * content; resolves with what `close(value)` was given (undefined when dismissed).
 */
export function modal(title, build) {
  return new Promise((resolve) => {
    const dialog = h('dialog', { 'aria-labelledby': 'dialog-title' });
    let result;
    const close = (value) => {
      result = value;
      dialog.close();
    };
    dialog.append(h('h2', { id: 'dialog-title' }, title), build(close));
    dialog.addEventListener('close', () => {
      dialog.remove();
      resolve(result);
    });
    document.body.append(dialog);
    dialog.showModal();
  });
}

/** Asks a yes/no question in a modal dialog; resolves true for yes. */
export function confirmDialog(title, message, yes = 'Yes', danger = false) {
  return modal(title, (close) => h('div', {},
    h('p', {}, message),
    h('div', { class: 'actions' },
      h('button', { type: 'button', class: danger ? 'danger' : '', onclick: () => close(true) }, yes),
      h('button', { type: 'button', class: 'secondary', onclick: () => close(false) }, 'Cancel')))).then(Boolean);
}

/** A short message at the bottom of the screen. */
export function toast(message) {
  const el = document.getElementById('toast');
  el.textContent = message;
  el.classList.add('show');
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => el.classList.remove('show'), 3000);
}

/** Parses a JSON object typed into a field; empty text = null. Throws a readable error. */
export function parseObject(text, what) {
  const trimmed = (text || '').trim();
  if (!trimmed) return null;
  let value;
  try {
    value = JSON.parse(trimmed);
  } catch (e) {
    throw new Error(`${what} is not valid JSON: ${e.message}`);
  }
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    throw new Error(`${what} must be a JSON object, like {"key": 1}`);
  }
  return value;
}

/** Copies text to the clipboard (falls back to selecting it where the Clipboard API is missing). */
export async function copyText(text, source) {
  try {
    await navigator.clipboard.writeText(text);
    toast('Copied');
  } catch {
    if (source && source.select) {
      source.focus();
      source.select();
      toast('Selected: press Ctrl+C to copy');
    }
  }
}

/** The query part of the location hash (`#/devices?networkId=2`). */
export function hashQuery() {
  const hash = location.hash;
  const i = hash.indexOf('?');
  return new URLSearchParams(i < 0 ? '' : hash.slice(i + 1));
}
