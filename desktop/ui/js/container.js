// A container's detail view: its live charts (CPU, memory against its limit, network and
// block I/O from the engine's stats stream) and its terminal. The stream is opened when
// the view shows and closed when another page replaces it.
import { S, $, h, invoke, channel, closeStatsView, reportError, stateBadge, fmtBytes, fmtPercent, fmtRate, findContainer } from './core.js';
import { registerView, showPage } from './nav.js';

// The charting and terminal libraries load when first used: the lists start without them,
// and a failure there cannot stop the rest of the app.
const charts = () => import('./charts.js');
async function openTerminal(...args) {
  try { (await import('./terminal.js')).openTerminal(...args); } catch (e) { reportError('Cannot open the terminal', e); }
}

let view = null; // { machine, id, name, state, stream, charts, closed }
let loading = null;

export function showContainer(c) { showPage('container', { machine: S.engineMachine, id: c.id, name: c.name, state: c.state }); }

export function openContainerTerminal(machine, c) {
  openTerminal(`Terminal: ${c.name}`, (size, events) => invoke('open_container_terminal', { machine, id: c.id, size, events }));
}

function render() {
  const v = view;
  const running = v.state === 'running';
  $('#container-title').textContent = v.name;
  $('#container-state').replaceChildren(stateBadge(v.state), h('span', { class: 'detail', id: 'container-stream-status' }, v.streamNote || ''));
  $('#container-tools').replaceChildren(
    h('button', { id: 'container-terminal', class: 'primary', disabled: !running, onclick: () => openContainerTerminal(v.machine, v) }, 'Open terminal'),
    h('button', { id: 'container-logs', onclick: () => showPage('logs', { machine: v.machine, id: v.id, name: v.name, state: v.state }) }, 'Logs'),
    running
      ? h('button', { id: 'container-stop', onclick: () => act('stop') }, 'Stop')
      : h('button', { id: 'container-start', onclick: () => act('start') }, 'Start'));
}

async function act(action) {
  const v = view;
  try {
    await invoke('container_action', { machine: v.machine, id: v.id, action });
  } catch (e) { reportError(`Cannot ${action} ${v.name}`, e); }
  refresh();
}

function openStream() {
  const v = view;
  if (v.stream !== null || v.opening) return;
  v.opening = true;
  const [cpu, mem, net, blk] = v.charts;
  const events = channel((ev) => {
    if (view !== v) return;
    if (ev.kind === 'sample') {
      cpu.push(ev.t_ms, [ev.cpu_percent]);
      mem.push(ev.t_ms, [ev.mem_bytes], `${fmtBytes(ev.mem_bytes)} of ${fmtBytes(ev.mem_limit_bytes)}`);
      net.push(ev.t_ms, [ev.net_rx_bps, ev.net_tx_bps], `↓ ${fmtRate(ev.net_rx_bps)} ↑ ${fmtRate(ev.net_tx_bps)}`);
      blk.push(ev.t_ms, [ev.blk_read_bps, ev.blk_write_bps], `read ${fmtRate(ev.blk_read_bps)} write ${fmtRate(ev.blk_write_bps)}`);
      v.streamNote = '';
    } else if (ev.kind === 'ended') {
      // A container that is not running uses nothing: the charts settle at zero.
      const t = Date.now();
      cpu.push(t, [0]);
      net.push(t, [0, 0]);
      blk.push(t, [0, 0]);
      v.stream = null;
      v.streamNote = ev.message;
      $('#container-charts').dataset.ended = 'true';
    }
    const note = $('#container-stream-status');
    if (note) note.textContent = v.streamNote;
  });
  invoke('open_container_stats', { machine: v.machine, id: v.id, events }).then((id) => {
    v.opening = false;
    if (view !== v || v.closed) { invoke('close_stats', { stream: id }).catch(() => {}); return; }
    v.stream = id;
    delete $('#container-charts').dataset.ended;
  }, (e) => {
    v.opening = false;
    v.streamNote = `No live figures: ${e.message || e}`;
    render();
  });
}

async function load(arg) {
  close();
  const token = {};
  loading = token;
  let lib;
  try { lib = await charts(); } catch (e) { reportError('Cannot load the charts', e); return; }
  if (loading !== token) return;
  const { LiveChart, COLORS } = lib;
  view = { ...arg, stream: null, opening: false, closed: false, streamNote: '' };
  view.charts = [
    new LiveChart('chart-cpu', 'CPU (100 % = one core)', [{ label: 'CPU', color: COLORS.a }], fmtPercent, 100),
    new LiveChart('chart-mem', 'Memory', [{ label: 'in use', color: COLORS.c }], fmtBytes, 64e6),
    new LiveChart('chart-net', 'Network', [{ label: 'received', color: COLORS.a }, { label: 'sent', color: COLORS.b }], fmtRate, 1000),
    new LiveChart('chart-blk', 'Block I/O', [{ label: 'read', color: COLORS.c }, { label: 'write', color: COLORS.d }], fmtRate, 1000),
  ];
  $('#container-charts').replaceChildren(...view.charts.map((c) => c.el));
  delete $('#container-charts').dataset.ended;
  render();
  for (const c of view.charts) c.fit();
  if (view.state === 'running') openStream();
}

/** Something changed in the engine: the container's state, and the stream with it. */
async function refresh() {
  const v = view;
  if (!v) return;
  try {
    const c = await findContainer(v.machine, v.id);
    if (view !== v) return;
    v.state = c ? c.state : 'removed';
    if (!c) v.streamNote = 'the container was removed';
  } catch (e) {
    if (view !== v) return;
    v.state = 'unknown';
    v.streamNote = e.message || String(e);
  }
  render();
  if (v.state === 'running') openStream();
}

function close() {
  loading = null;
  if (view) closeStatsView(view);
  view = null;
}

$('#container-back').addEventListener('click', () => showPage('containers'));
registerView('container', { load, refresh, close, engine: true, nav: 'containers' });
