// The shared part of the UI: Tauri calls, the app's state, DOM helpers, formatting,
// toasts and the dialogs every view uses.

const tauri = window.__TAURI__;
export const invoke = (cmd, args) => tauri.core.invoke(cmd, args);
export const listen = (name, fn) => tauri.event.listen(name, (e) => fn(e.payload));
/** A channel a command streams to (a terminal session, a stats stream). */
export function channel(onmessage) {
  const c = new tauri.core.Channel();
  c.onmessage = onmessage;
  return c;
}

// ---------- state ----------
export const S = {
  page: 'machines',
  machines: [],
  active: null,
  currentContext: null,
  progress: {},        // machine -> { op, detail }
  engineMachine: null, // machine the engine pages show
  firstPaintSent: false,
};

// ---------- DOM helpers ----------
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === 'class') el.className = v;
    else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'text') el.textContent = v;
    else el.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}
export const $ = (sel) => document.querySelector(sel);
export const $$ = (sel) => Array.from(document.querySelectorAll(sel));

export function fmtBytes(n) {
  if (n == null || n < 0) return '–';
  const u = ['B', 'kB', 'MB', 'GB', 'TB'];
  let i = 0;
  while (n >= 1000 && i < u.length - 1) { n /= 1000; i++; }
  return `${n.toFixed(n < 10 && i > 0 ? 1 : 0)} ${u[i]}`;
}
export function fmtMib(m) { return m == null ? '–' : (m >= 1024 && m % 1024 === 0 ? `${m / 1024} GiB` : `${m} MiB`); }
export function fmtAgo(unixS) {
  if (!unixS) return '–';
  const s = Math.max(0, Date.now() / 1000 - unixS);
  if (s < 60) return `${Math.floor(s)} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return `${Math.floor(s / 86400)} d ago`;
}
export function errMsg(e) { return (e && e.message) ? e.message : String(e); }

// ---------- toasts ----------
export function toast(text, isError) {
  const t = h('div', { class: 'toast' + (isError ? ' error' : ''), role: isError ? 'alert' : null },
    h('button', { class: 'small', 'aria-label': 'Dismiss', onclick: () => t.remove() }, '×'), text);
  $('#toasts').append(t);
  setTimeout(() => t.remove(), isError ? 12000 : 5000);
}
export function reportError(what, e) { toast(`${what}: ${errMsg(e)}`, true); }

// ---------- dialogs ----------
export function confirmDialog(title, text, okLabel) {
  const d = $('#confirm-dialog');
  $('#confirm-title').textContent = title;
  $('#confirm-text').textContent = text;
  $('#confirm-ok').textContent = okLabel || 'OK';
  d.returnValue = '';
  d.showModal();
  return new Promise((resolve) => d.addEventListener('close', () => resolve(d.returnValue === 'ok'), { once: true }));
}

let textDialogOnClose = null;
export function textDialog(title, text, tools) {
  const d = $('#text-dialog');
  $('#text-title').textContent = title;
  $('#text-body').textContent = text;
  const t = $('#text-tools');
  t.replaceChildren(...(tools || []));
  if (!d.open) d.showModal();
  $('#text-body').focus();
}
$('#text-close').addEventListener('click', () => $('#text-dialog').close());
$('#text-dialog').addEventListener('close', () => { if (textDialogOnClose) { const f = textDialogOnClose; textDialogOnClose = null; f(); } });
/** Appends streamed output to `pre`, bounded for chatty streams, following the end when the reader is there. */
export function appendOutput(pre, text) {
  const atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 20;
  pre.append(text);
  if (pre.textContent.length > 2_000_000) pre.textContent = pre.textContent.slice(-1_000_000);
  if (atEnd) pre.scrollTop = pre.scrollHeight;
}
export function appendText(text) { appendOutput($('#text-body'), text); }

/** A status line's text and state (`data-state`: what a view and its tests read; `error` is shown as one). */
export function setStatus(el, text, state) {
  el.textContent = text;
  el.className = `detail${state === 'error' ? ' error' : ''}`;
  if (state) el.dataset.state = state; else delete el.dataset.state;
}


export function stateBadge(state, label) {
  return h('span', { class: `badge ${state}`, 'data-state': state }, label || state);
}

export function setTextDialogOnClose(f) { textDialogOnClose = f; }

export function fmtPercent(v) { return v == null ? '–' : `${v < 10 ? v.toFixed(1) : Math.round(v)} %`; }
export function fmtRate(v) {
  if (v == null) return '–';
  const u = ['B/s', 'kB/s', 'MB/s', 'GB/s'];
  let i = 0;
  while (v >= 1000 && i < u.length - 1) { v /= 1000; i++; }
  return `${v.toFixed(v < 10 && i > 0 ? 1 : 0)} ${u[i]}`;
}

/** Ends a detail view's live part: its stats stream (closed on the Rust side) and its charts. */
export function closeStatsView(v) {
  v.closed = true;
  if (v.stream !== null) invoke('close_stats', { stream: v.stream }).catch(() => {});
  v.stream = null;
  for (const c of v.charts || []) c.destroy();
}

/** Container `id` of `machine` as the Containers list shows it, or null when it is gone. */
export async function findContainer(machine, id) {
  const groups = await invoke('list_containers', { machine });
  return groups.flatMap((g) => g.containers).find((x) => x.id === id) || null;
}
