// The Machines page: the list, the create form, lifecycle actions and logs.
import { S, $, h, invoke, listen, toast, reportError, confirmDialog, textDialog, setTextDialogOnClose, appendText, errMsg, fmtMib, stateBadge } from './core.js';
import { registerView, showPage } from './nav.js';
import { pickEngineMachine, renderEnginePicker } from './engine.js';
import { showMachine, openMachineShell } from './machine.js';

export function applyMachineList(list) {
  S.machines = list.machines;
  S.active = list.active;
  S.currentContext = list.current_context;
  const ctx = $('#context-status');
  ctx.textContent = `docker context: ${list.current_context || 'default'}`;
  pickEngineMachine();
  if (S.page === 'machines') renderMachines();
  else if (S.page !== 'settings') renderEnginePicker();
}

export async function loadMachines() {
  try {
    applyMachineList(await invoke('list_machines'));
  } catch (e) {
    reportError('Cannot list machines', e);
  }
}

export async function machineOp(name, op) {
  S.progress[name] = { op, detail: op === 'start' || op === 'restart' ? 'starting' : 'stopping' };
  renderMachines();
  try {
    const m = await invoke('machine_op', { name, op });
    toast(`Machine ${name} is ${m.state}`);
  } catch (e) {
    reportError(`Cannot ${op} ${name}`, e);
  } finally {
    delete S.progress[name];
    await loadMachines();
  }
}

// ---------- first run ----------
const ACCEL = {
  kvm: 'hardware virtualization (KVM)',
  hvf: 'hardware virtualization (Hypervisor.framework)',
  whpx: 'hardware virtualization (Windows Hypervisor Platform)',
  tcg: 'software emulation (TCG: much slower than hardware virtualization)',
};
const BACKEND = { vmm: 'rmachine-vmm, rmachine\'s own microVM monitor', qemu: 'QEMU' };
let plan = null;
let planError = null;

async function loadPlan() {
  try {
    plan = await invoke('first_run_plan');
    planError = null;
  } catch (e) {
    planError = errMsg(e);
  }
  if (!S.machines.length && S.page === 'machines') renderMachines();
}

/** With no machine: what `default` would be and run on, said before anything starts. */
function firstRunCard() {
  const p = S.progress.default;
  if (!plan && !planError) loadPlan();
  const said = plan
    ? [h('p', { id: 'first-run-plan' },
      `Machine “default”: ${plan.cpus} CPUs, ${fmtMib(plan.memory_mib)} of memory, ${plan.disk_size_gib} GiB of disk (taken as it is used), ${plan.arch}. `,
      `It will run under ${BACKEND[plan.backend] || plan.backend} with ${ACCEL[plan.accel] || plan.accel}.`),
    h('p', { class: 'why', id: 'first-run-why' }, `Why: ${plan.reason}${plan.reason.includes(plan.accel_reason) ? '' : `; ${plan.accel_reason}`}.`)]
    : [h('p', { class: planError ? 'detail error' : 'detail', id: 'first-run-plan' }, planError ? `Cannot tell what this computer can run: ${planError}` : 'Finding out what this computer can run…')];
  return h('div', { class: 'card empty', id: 'no-machines' },
    h('h2', {}, 'No machines yet'),
    h('p', {}, 'A machine is a small VM that runs the Docker Engine; docker on this computer then uses it.'),
    ...said,
    p ? h('p', { class: 'why', role: 'status', id: 'first-run-progress' }, p.detail || 'starting') : null,
    h('div', { class: 'form-actions' },
      h('button', { class: 'primary', id: 'first-run-start', disabled: !plan || !!p, onclick: firstRun }, 'Create and start “default”'),
      h('button', { id: 'first-run-custom', disabled: !!p, onclick: () => openCreateForm() }, 'Other settings…')));
}

async function firstRun() {
  S.progress.default = { op: 'start', detail: 'creating the machine' };
  renderMachines();
  try {
    const m = await invoke('start_default_machine');
    toast(`Machine default is ${m.state} (its docker context: rmachine-default)`);
  } catch (e) {
    reportError('Cannot create and start the machine default', e);
  } finally {
    delete S.progress.default;
    plan = null;
    await loadMachines();
  }
}

export async function removeMachine(m) {
  const busy = !['stopped', 'error'].includes(m.state);
  const ok = await confirmDialog(`Delete machine ${m.name}?`,
    `This deletes the machine's data disk (all its containers, images and volumes) and its docker context rmachine-${m.name}.` +
    (busy ? ' The machine is running: it will be stopped at once.' : ''), 'Delete');
  if (!ok) return;
  try {
    await invoke('remove_machine', { name: m.name, force: busy });
    toast(`Machine ${m.name} deleted`);
  } catch (e) {
    reportError(`Cannot delete ${m.name}`, e);
  }
  loadMachines();
}

export async function useMachine(name) {
  try {
    applyMachineList(await invoke('use_machine', { name }));
    toast(name ? `docker now uses machine ${name} (context rmachine-${name})` : 'docker now uses its default context');
  } catch (e) {
    reportError('Cannot switch the docker context', e);
  }
}

let logTimer = null;
export async function showMachineLogs(name, kind) {
  let len = 0;
  const load = async (first) => {
    try {
      const r = await invoke('machine_logs', { name, kind, maxBytes: first ? 256 * 1024 : 4 * 1024 * 1024 });
      if (first || r.len < len) { $('#text-body').textContent = r.text || `(no ${kind} log yet)`; const pre = $('#text-body'); pre.scrollTop = pre.scrollHeight; }
      else if (r.len > len) {
        // Only the new part: the tail is longer than what was added, take its end.
        const added = r.len - len;
        appendText(r.text.slice(Math.max(0, r.text.length - added)));
      }
      len = r.len;
    } catch (e) {
      $('#text-body').textContent = errMsg(e);
    }
  };
  const kindButtons = ['console', 'hostagent', 'vmm'].map((k) =>
    h('button', { class: 'small', 'aria-pressed': String(k === kind), onclick: () => { stop(); showMachineLogs(name, k); } }, k));
  const stop = () => { if (logTimer) { clearInterval(logTimer); logTimer = null; } };
  stop();
  textDialog(`${name}: ${kind} log`, 'loading…', kindButtons);
  setTextDialogOnClose(stop);
  await load(true);
  // The log file is followed by its length (a file check, not the engine).
  logTimer = setInterval(() => load(false), 1000);
}

export function renderMachines() {
  const body = $('#machines-body');
  if (!S.machines.length) {
    body.replaceChildren(firstRunCard());
    firstPaint();
    return;
  }
  const rows = S.machines.map((m) => {
    const p = S.progress[m.name];
    const state = p && !['running', 'stopped', 'error'].includes(m.state) ? m.state : (p ? (p.op === 'stop' || p.op === 'kill' ? 'stopping' : 'starting') : m.state);
    const busy = !!p || ['starting', 'stopping', 'creating'].includes(m.state);
    const running = m.state === 'running';
    const stopped = ['stopped', 'error'].includes(m.state);
    const detail = p ? (p.detail || '') : (m.state === 'starting' ? m.detail : '');
    const actions = [];
    if (stopped) actions.push(h('button', { class: 'small primary', 'data-action': 'start', disabled: busy || !m.can_start_stop, onclick: () => machineOp(m.name, 'start') }, 'Start'));
    if (!stopped) actions.push(h('button', { class: 'small', 'data-action': 'stop', disabled: busy && m.state !== 'starting', onclick: () => machineOp(m.name, m.state === 'starting' ? 'kill' : 'stop') }, 'Stop'));
    actions.push(h('button', { class: 'small', 'data-action': 'restart', disabled: busy || !running, onclick: () => machineOp(m.name, 'restart') }, 'Restart'));
    if (running && !m.host) actions.push(h('button', { class: 'small', 'data-action': 'shell', onclick: () => openMachineShell(m.name) }, 'Shell'));
    actions.push(h('button', { class: 'small', 'data-action': 'logs', onclick: () => showMachineLogs(m.name, 'console') }, 'Logs'));
    actions.push(h('button', { class: 'small danger', 'data-action': 'delete', disabled: busy, 'aria-label': `Delete ${m.name}`, onclick: () => removeMachine(m) }, 'Delete'));
    return h('tr', { id: `machine-${m.name}`, 'data-name': m.name, 'data-state': m.state },
      h('td', {}, h('button', { class: 'link', 'data-action': 'details', title: `Charts and shell of ${m.name}`, onclick: () => showMachine(m.name) }, h('strong', {}, m.name)), m.active ? h('span', { class: 'active-tag', title: 'the docker CLI uses this machine' }, 'active') : null),
      h('td', {}, stateBadge(state),
        detail ? h('div', { class: 'detail' }, detail) : null,
        !p && m.state === 'stopped' && m.saved_state && !m.saved_state.damaged
          ? h('div', { class: 'detail saved', title: 'Stop saved this machine: Start resumes it with its containers still running' }, 'saved: Start resumes it') : null,
        m.error ? h('div', { class: 'detail error' }, m.error) : null,
        ...(m.warnings || []).map((w) => h('div', { class: 'detail error', role: 'status' }, `⚠ ${w}`))),
      h('td', {}, m.driver || '–', m.backend && m.backend !== m.driver ? h('span', { class: 'muted' }, ` (${m.backend})`) : null,
        m.host ? h('div', { class: 'detail host', title: 'Start and Stop act on the SSH tunnel (the local docker.sock and ports); the engine on the host keeps running' }, `on ${m.host} · start/stop act on the tunnel`) : null),
      h('td', { class: 'num' }, m.cpus ?? '–'),
      h('td', { class: 'num' }, fmtMib(m.memory_mib)),
      h('td', { class: 'num' }, m.disk_size_gib != null ? `${m.disk_size_gib} GiB` : '–'),
      h('td', {}, m.active
        ? h('button', { class: 'small', 'data-action': 'unuse', title: 'switch docker back to its default context', onclick: () => useMachine(null) }, 'In use')
        : h('button', { class: 'small', 'data-action': 'use', onclick: () => useMachine(m.name) }, 'Use')),
      h('td', { class: 'actions' }, actions));
  });
  body.replaceChildren(h('table', { id: 'machines-table' },
    h('thead', {}, h('tr', {}, ['Name', 'State', 'Driver', 'CPUs', 'Memory', 'Disk', 'Docker context', ''].map((c) => h('th', { scope: 'col' }, c)))),
    h('tbody', {}, rows)));
  firstPaint();
}

/** Tells the app (once) that the machine list is on screen: the start-up benchmark's mark. */
export function firstPaint() {
  if (S.firstPaintSent) return;
  S.firstPaintSent = true;
  requestAnimationFrame(() => requestAnimationFrame(() => invoke('first_paint').catch(() => {})));
}

export function openCreateForm() {
  const f = $('#create-form');
  f.hidden = false;
  syncCreateDriver();
  $('#create-name').focus();
}
/** Shows the remote host's fields for an ssh machine, the VM's sizes otherwise. */
export function syncCreateDriver() {
  const ssh = $('#create-driver').value === 'ssh';
  $('#create-ssh').hidden = !ssh;
  $('#create-ssh-host').required = ssh;
  document.querySelectorAll('#create-form .vm-only').forEach((el) => { el.hidden = ssh; });
}
$('#create-driver').addEventListener('change', syncCreateDriver);
listen('machine-create-progress', (p) => {
  $('#create-ssh-progress').textContent = (p && p.detail) || '';
});
$('#new-machine').addEventListener('click', openCreateForm);
$('#create-cancel').addEventListener('click', () => { $('#create-form').hidden = true; $('#new-machine').focus(); });
$('#create-form').addEventListener('submit', async (e) => {
  e.preventDefault();
  const num = (id) => { const v = $(id).value.trim(); return v === '' ? null : Number(v); };
  const text = (id) => { const v = $(id).value.trim(); return v === '' ? null : v; };
  if ($('#create-driver').value === 'ssh') {
    const machine = {
      name: $('#create-name').value.trim() || 'default',
      ssh_host: $('#create-ssh-host').value.trim(),
      ssh_key: text('#create-ssh-key'),
      passphrase: $('#create-ssh-passphrase').value || null,
      ssh_host_key: text('#create-ssh-host-key'),
      install: $('#create-ssh-install').value,
      engine_tls: $('#create-ssh-tls').checked,
      restart_engine: $('#create-ssh-restart').checked,
    };
    const btn = $('#create-submit');
    btn.disabled = true;
    $('#create-ssh-progress').textContent = `connecting to ${machine.ssh_host}…`;
    try {
      await invoke('create_ssh_machine', { machine });
      toast(`Machine ${machine.name} created on ${machine.ssh_host}`);
      $('#create-form').reset();
      $('#create-ssh-progress').textContent = '';
      $('#create-form').hidden = true;
      await loadMachines();
    } catch (err) {
      $('#create-ssh-progress').textContent = '';
      reportError('Cannot create the machine', err);
    } finally {
      $('#create-ssh-passphrase').value = '';
      btn.disabled = false;
    }
    return;
  }
  const machine = {
    name: $('#create-name').value.trim() || 'default',
    driver: $('#create-driver').value || null,
    cpus: num('#create-cpus'),
    memory_mib: num('#create-memory'),
    disk_size_gib: num('#create-disk'),
  };
  const btn = $('#create-submit');
  btn.disabled = true;
  try {
    await invoke('create_machine', { machine });
    toast(`Machine ${machine.name} created`);
    $('#create-form').reset();
    $('#create-form').hidden = true;
    await loadMachines();
    const startBtn = $(`#machine-${CSS.escape(machine.name)} [data-action="start"]`);
    if (startBtn) startBtn.focus();
  } catch (err) {
    reportError('Cannot create the machine', err);
  } finally {
    btn.disabled = false;
  }
});

registerView('machines', { load: renderMachines });
