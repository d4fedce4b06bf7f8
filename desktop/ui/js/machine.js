// A machine's detail view: the guest's CPU and memory (read through its agent) and what
// the machine costs the host (its VM process, helpers and host agent), sampled every 2 s
// while the view shows; and a shell in the guest.
import { S, $, h, invoke, channel, closeStatsView, reportError, stateBadge, fmtBytes, fmtMib, fmtPercent } from './core.js';
import { registerView, showPage } from './nav.js';

// The charting and terminal libraries load when first used: the lists start without them,
// and a failure there cannot stop the rest of the app.
const charts = () => import('./charts.js');
async function openTerminal(...args) {
  try { (await import('./terminal.js')).openTerminal(...args); } catch (e) { reportError('Cannot open the terminal', e); }
}

let view = null;
let loading = null;

export function showMachine(name) { showPage('machine', { name }); }

export function openMachineShell(name) {
  openTerminal(`Shell: machine ${name}`, (size, events) => invoke('open_machine_shell', { machine: name, size, events }));
}

function machine() { return S.machines.find((m) => m.name === view?.name); }

function render() {
  const v = view;
  const m = machine();
  const state = m ? m.state : 'removed';
  $('#machine-title').textContent = `Machine ${v.name}`;
  $('#machine-state').replaceChildren(stateBadge(state),
    m ? h('span', { class: 'detail' }, `${m.driver || ''}${m.backend && m.backend !== m.driver ? ` (${m.backend})` : ''} · ${m.cpus ?? '–'} CPUs · ${fmtMib(m.memory_mib)}`) : null,
    h('span', { class: 'detail', id: 'machine-stream-status' }, v.note || ''));
  $('#machine-tools').replaceChildren(
    h('button', { id: 'machine-shell', class: 'primary', disabled: state !== 'running' || !!m?.host, title: m?.host ? 'an ssh machine: use ssh itself' : null, onclick: () => openMachineShell(v.name) }, 'Shell'));
}

function openStream() {
  const v = view;
  if (v.stream !== null || v.opening) return;
  v.opening = true;
  const [gcpu, gmem, hcpu, hmem] = v.charts;
  const events = channel((ev) => {
    if (view !== v) return;
    if (ev.kind === 'sample') {
      gcpu.push(ev.t_ms, [ev.guest_cpu_percent]);
      gmem.push(ev.t_ms, [ev.guest_mem_used_bytes, ev.guest_mem_total_bytes],
        ev.guest_mem_used_bytes == null ? '–' : `${fmtBytes(ev.guest_mem_used_bytes)} of ${fmtBytes(ev.guest_mem_total_bytes)}`);
      hcpu.push(ev.t_ms, [ev.host_cpu_percent]);
      hmem.push(ev.t_ms, [ev.host_rss_bytes, ev.vm_rss_bytes],
        `${fmtBytes(ev.host_rss_bytes)}${ev.vm_rss_bytes != null ? ` (VM ${fmtBytes(ev.vm_rss_bytes)})` : ''}`);
      v.note = ev.guest_error ? `guest: ${ev.guest_error}` : '';
    } else if (ev.kind === 'ended') {
      v.stream = null;
      v.note = ev.message;
    }
    const note = $('#machine-stream-status');
    if (note) note.textContent = v.note;
  });
  invoke('open_machine_stats', { machine: v.name, events }).then((id) => {
    v.opening = false;
    if (view !== v || v.closed) { invoke('close_stats', { stream: id }).catch(() => {}); return; }
    v.stream = id;
  }, (e) => { v.opening = false; v.note = `No live figures: ${e.message || e}`; render(); });
}

async function load(arg) {
  close();
  const token = {};
  loading = token;
  let lib;
  try { lib = await charts(); } catch (e) { reportError('Cannot load the charts', e); return; }
  if (loading !== token) return;
  const { LiveChart, COLORS } = lib;
  view = { name: arg.name, stream: null, opening: false, closed: false, note: '' };
  view.charts = [
    new LiveChart('chart-guest-cpu', 'Guest CPU (100 % = one CPU)', [{ label: 'CPU', color: COLORS.a }], fmtPercent, 100),
    new LiveChart('chart-guest-mem', 'Guest memory', [{ label: 'in use', color: COLORS.c }, { label: 'assigned', color: COLORS.b }], fmtBytes, 64e6),
    new LiveChart('chart-host-cpu', 'Host CPU of its processes (100 % = one core)', [{ label: 'CPU', color: COLORS.d }], fmtPercent, 100),
    new LiveChart('chart-host-mem', 'Host memory (RSS)', [{ label: 'all processes', color: COLORS.b }, { label: 'VM process', color: COLORS.a }], fmtBytes, 64e6),
  ];
  $('#machine-charts').replaceChildren(...view.charts.map((c) => c.el));
  $('#machine-disk').replaceChildren();
  render();
  loadDisk(view);
  for (const c of view.charts) c.fit();
  if (machine()?.state === 'running') openStream();
}

/** The data disk: what the engine's objects take (`docker system df`) and the file's cost on the host. */
async function loadDisk(v) {
  if (machine()?.state !== 'running' || machine()?.host) return;
  try {
    const d = await invoke('machine_disk_usage', { machine: v.name });
    if (view !== v) return;
    const host = d.disk_allocated_bytes == null ? '' : ` · ${fmtBytes(d.disk_allocated_bytes)} on the host`;
    $('#machine-disk').replaceChildren(
      h('strong', {}, 'Data disk '), h('span', {}, `${fmtBytes(d.disk_size_bytes)}${host}`),
      h('span', { class: 'detail' }, ` · images ${fmtBytes(d.images_bytes)} · containers ${fmtBytes(d.containers_bytes)} · volumes ${fmtBytes(d.volumes_bytes)} · build cache ${fmtBytes(d.build_cache_bytes)}`));
  } catch (e) {
    if (view === v) $('#machine-disk').replaceChildren(h('span', { class: 'detail' }, `Data disk: ${e.message || e}`));
  }
}

function refresh() {
  if (!view) return;
  render();
  if (!$('#machine-disk').childElementCount) loadDisk(view);
  if (machine()?.state === 'running') openStream();
}

function close() {
  loading = null;
  if (view) closeStatsView(view);
  view = null;
}

$('#machine-back').addEventListener('click', () => showPage('machines'));
registerView('machine', { load, refresh, close, nav: 'machines' });
