// A container's log view: its lines as the engine gave them (each with its timestamp, shown
// or hidden), followed while "Follow" is on, searched and filtered here, and downloaded
// whole. The stream is opened when the view shows and closed when another page replaces
// it, when Follow is turned off, or when the container stops.
import { $, h, invoke, channel, toast, reportError, stateBadge, errMsg, findContainer } from './core.js';
import { registerView, showPage } from './nav.js';

/** The most lines the view keeps (the oldest go first). */
const MAX_LINES = 20000;
/** How many lines of the past a (re)opened stream sends first. */
const TAIL = 2000;

let view = null; // { machine, id, name, state, stream, opening, lines, note, ended }

export function showLogs(machine, c) { showPage('logs', { machine, id: c.id, name: c.name, state: c.state }); }

function query() { return $('#logs-search').value.trim().toLowerCase(); }
function filtering() { return $('#logs-filter').checked && query() !== ''; }
function matches(l, q) { return q !== '' && l.text.toLowerCase().includes(q); }

/** `2024-05-01T10:00:00.123456789Z` as `2024-05-01 10:00:00.123`. */
function shortTime(ts) { return ts.replace('T', ' ').replace(/(\.\d{3})\d*/, '$1').replace(/Z$/, ''); }

/** The text of a line with each occurrence of `q` marked. */
function marked(text, q) {
  if (!q) return [text];
  const out = [];
  const lower = text.toLowerCase();
  let at = 0;
  for (let i = lower.indexOf(q); i !== -1; i = lower.indexOf(q, at)) {
    if (i > at) out.push(text.slice(at, i));
    out.push(h('mark', {}, text.slice(i, i + q.length)));
    at = i + q.length;
  }
  if (at < text.length) out.push(text.slice(at));
  return out;
}

function lineEl(l, q) {
  return h('div', { class: `log-line ${l.source}${matches(l, q) ? ' match' : ''}` },
    l.ts ? h('span', { class: 'ts', title: l.ts }, shortTime(l.ts)) : null,
    h('span', { class: 'text' }, marked(l.text, q)));
}

function atEnd(body) { return body.scrollTop + body.clientHeight >= body.scrollHeight - 24; }

/** Draws every line again (after a search, a filter change or a reload). */
function renderLines() {
  const v = view;
  const body = $('#logs-body');
  const q = query();
  const shown = filtering() ? v.lines.filter((l) => matches(l, q)) : v.lines;
  body.replaceChildren(...shown.map((l) => lineEl(l, q)));
  if (!v.lines.length) body.append(h('div', { class: 'muted log-empty' }, v.ended ? 'This container wrote nothing.' : 'No output yet.'));
  else if (!shown.length) body.append(h('div', { class: 'muted log-empty' }, `No line contains “${$('#logs-search').value.trim()}”.`));
  updateCounts();
  if ($('#logs-follow').checked) body.scrollTop = body.scrollHeight;
}

function updateCounts() {
  const v = view;
  const body = $('#logs-body');
  const q = query();
  const n = q ? v.lines.reduce((a, l) => a + (matches(l, q) ? 1 : 0), 0) : 0;
  $('#logs-matches').textContent = q ? `${n} matching line${n === 1 ? '' : 's'}` : `${v.lines.length} line${v.lines.length === 1 ? '' : 's'}`;
  body.dataset.lines = String(v.lines.length);
  body.dataset.matches = String(n);
}

function appendLines(lines) {
  const v = view;
  const body = $('#logs-body');
  const follow = $('#logs-follow').checked && atEnd(body);
  const q = query();
  if (!v.lines.length) body.replaceChildren();
  v.lines.push(...lines);
  const shown = filtering() ? lines.filter((l) => matches(l, q)) : lines;
  body.append(...shown.map((l) => lineEl(l, q)));
  if (v.lines.length > MAX_LINES) {
    const drop = v.lines.length - MAX_LINES;
    v.lines.splice(0, drop);
    renderLines();
    return;
  }
  updateCounts();
  if (follow) body.scrollTop = body.scrollHeight;
}

function renderHead() {
  const v = view;
  $('#logs-title').textContent = `Logs: ${v.name}`;
  $('#logs-state').replaceChildren(stateBadge(v.state), h('span', { class: 'detail', id: 'logs-status' }, v.note));
}

function setNote(note) {
  view.note = note;
  const el = $('#logs-status');
  if (el) el.textContent = note;
}

function openStream() {
  const v = view;
  if (v.stream !== null || v.opening) return;
  v.opening = true;
  v.lines = [];
  v.ended = false;
  delete $('#logs-body').dataset.ended;
  const follow = $('#logs-follow').checked;
  const events = channel((ev) => {
    if (view !== v || v.closed) return;
    if (ev.kind === 'lines') appendLines(ev.lines);
    else if (ev.kind === 'ended') {
      v.stream = null;
      v.ended = true;
      $('#logs-body').dataset.ended = 'true';
      if (!v.lines.length) renderLines();
      setNote(ev.message || (follow ? '' : 'not following: turn Follow on to see new lines'));
    }
  });
  renderLines();
  invoke('open_container_logs', { machine: v.machine, id: v.id, tail: TAIL, follow, events }).then((id) => {
    v.opening = false;
    if (view !== v || v.closed) { invoke('close_container_logs', { stream: id }).catch(() => {}); return; }
    if (!v.ended) v.stream = id;
    if (follow && !v.ended) setNote('following');
  }, (e) => {
    v.opening = false;
    setNote(`Cannot read the log: ${errMsg(e)}`);
  });
}

function closeStream(v) {
  if (v.stream !== null) invoke('close_container_logs', { stream: v.stream }).catch(() => {});
  v.stream = null;
}

function load(arg) {
  close();
  view = { ...arg, stream: null, opening: false, closed: false, lines: [], note: '', ended: false };
  $('#logs-search').value = '';
  $('#logs-follow').checked = true;
  renderHead();
  openStream();
}

/** Something changed in the engine: the container's state (a restarted one is read again). */
async function refresh() {
  const v = view;
  if (!v) return;
  try {
    const c = await findContainer(v.machine, v.id);
    if (view !== v) return;
    const was = v.state;
    v.state = c ? c.state : 'removed';
    renderHead();
    if (c && c.state === 'running' && was !== 'running' && $('#logs-follow').checked && v.stream === null) openStream();
  } catch (e) {
    if (view === v) setNote(errMsg(e));
  }
}

function close() {
  if (view) { view.closed = true; closeStream(view); }
  view = null;
}

let searchTimer = null;
$('#logs-search').addEventListener('input', () => {
  clearTimeout(searchTimer);
  searchTimer = setTimeout(() => { if (view) renderLines(); }, 120);
});
$('#logs-search').addEventListener('keydown', (e) => {
  if (e.key !== 'Enter' || !view) return;
  // Enter: the next matching line (Shift+Enter: the one before).
  const hits = Array.from(document.querySelectorAll('#logs-body .log-line.match'));
  if (!hits.length) return;
  const cur = hits.findIndex((x) => x.classList.contains('current'));
  for (const x of hits) x.classList.remove('current');
  const next = hits[(cur + (e.shiftKey ? -1 : 1) + hits.length) % hits.length];
  next.classList.add('current');
  next.scrollIntoView({ block: 'center' });
});
$('#logs-filter').addEventListener('change', () => { if (view) renderLines(); });
$('#logs-timestamps').addEventListener('change', () => {
  $('#logs-body').classList.toggle('show-ts', $('#logs-timestamps').checked);
});
$('#logs-follow').addEventListener('change', () => {
  const v = view;
  if (!v) return;
  if ($('#logs-follow').checked) {
    closeStream(v);
    openStream();
  } else {
    closeStream(v);
    setNote('not following: turn Follow on to see new lines');
  }
});
$('#logs-download').addEventListener('click', async () => {
  const v = view;
  if (!v) return;
  const btn = $('#logs-download');
  btn.disabled = true;
  try {
    const saved = await invoke('save_container_logs', { machine: v.machine, id: v.id, name: v.name, timestamps: $('#logs-timestamps').checked });
    if (saved) {
      $('#logs-download').dataset.saved = saved.path;
      toast(saved.chosen
        ? `Saved ${saved.count} lines to ${saved.path}`
        : `Saved ${saved.count} lines to ${saved.path} (no file chooser can be shown here, so it went to your Downloads folder)`);
    }
  } catch (e) {
    reportError(`Cannot download the log of ${v.name}`, e);
  } finally {
    btn.disabled = false;
  }
});
$('#logs-back').addEventListener('click', () => showPage('containers'));
registerView('logs', { load, refresh, close, engine: true, nav: 'containers' });
