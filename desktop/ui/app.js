// rmachine Desktop UI: plain JS over Tauri commands and events (no bundler, no network).
'use strict';

const tauri = window.__TAURI__;
const invoke = (cmd, args) => tauri.core.invoke(cmd, args);
const listen = (name, fn) => tauri.event.listen(name, (e) => fn(e.payload));

// ---------- state ----------
const S = {
  page: 'machines',
  machines: [],
  active: null,
  currentContext: null,
  progress: {},        // machine -> { op, detail }
  engineMachine: null, // machine the engine pages show
  logsFollowing: null, // container id whose logs the dialog shows
  firstPaintSent: false,
};

// ---------- DOM helpers ----------
function h(tag, attrs, ...children) {
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
const $ = (sel) => document.querySelector(sel);
const $$ = (sel) => Array.from(document.querySelectorAll(sel));

function fmtBytes(n) {
  if (n == null || n < 0) return '–';
  const u = ['B', 'kB', 'MB', 'GB', 'TB'];
  let i = 0;
  while (n >= 1000 && i < u.length - 1) { n /= 1000; i++; }
  return `${n.toFixed(n < 10 && i > 0 ? 1 : 0)} ${u[i]}`;
}
function fmtMib(m) { return m == null ? '–' : (m >= 1024 && m % 1024 === 0 ? `${m / 1024} GiB` : `${m} MiB`); }
function fmtAgo(unixS) {
  if (!unixS) return '–';
  const s = Math.max(0, Date.now() / 1000 - unixS);
  if (s < 60) return `${Math.floor(s)} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return `${Math.floor(s / 86400)} d ago`;
}
function errMsg(e) { return (e && e.message) ? e.message : String(e); }

// ---------- toasts ----------
function toast(text, isError) {
  const t = h('div', { class: 'toast' + (isError ? ' error' : ''), role: isError ? 'alert' : null },
    h('button', { class: 'small', 'aria-label': 'Dismiss', onclick: () => t.remove() }, '×'), text);
  $('#toasts').append(t);
  setTimeout(() => t.remove(), isError ? 12000 : 5000);
}
function reportError(what, e) { toast(`${what}: ${errMsg(e)}`, true); }

// ---------- dialogs ----------
function confirmDialog(title, text, okLabel) {
  const d = $('#confirm-dialog');
  $('#confirm-title').textContent = title;
  $('#confirm-text').textContent = text;
  $('#confirm-ok').textContent = okLabel || 'OK';
  d.returnValue = '';
  d.showModal();
  return new Promise((resolve) => d.addEventListener('close', () => resolve(d.returnValue === 'ok'), { once: true }));
}

let textDialogOnClose = null;
function textDialog(title, text, tools) {
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
function appendText(text) {
  const pre = $('#text-body');
  const atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 20;
  pre.append(text);
  // Keep the view bounded for chatty containers.
  if (pre.textContent.length > 2_000_000) pre.textContent = pre.textContent.slice(-1_000_000);
  if (atEnd) pre.scrollTop = pre.scrollHeight;
}

// ---------- navigation ----------
const PAGES = ['machines', 'containers', 'images', 'volumes', 'networks', 'settings'];
function showPage(page) {
  S.page = page;
  for (const p of PAGES) {
    $(`#page-${p}`).hidden = p !== page;
    const b = $(`#nav-${p}`);
    if (p === page) b.setAttribute('aria-current', 'page'); else b.removeAttribute('aria-current');
  }
  refreshPage();
}
for (const b of $$('.sidebar button[data-page]')) b.addEventListener('click', () => showPage(b.dataset.page));
document.addEventListener('keydown', (e) => {
  if (e.altKey && !e.ctrlKey && !e.metaKey && e.key >= '1' && e.key <= '6') {
    e.preventDefault();
    showPage(PAGES[Number(e.key) - 1]);
    $(`#nav-${S.page}`).focus();
  }
});

function refreshPage() {
  switch (S.page) {
    case 'machines': renderMachines(); break;
    case 'containers': loadContainers(); break;
    case 'images': loadImages(); break;
    case 'volumes': loadVolumes(); break;
    case 'networks': loadNetworks(); break;
    case 'settings': loadDefaults(); break;
  }
}

// ---------- machines ----------
function applyMachineList(list) {
  S.machines = list.machines;
  S.active = list.active;
  S.currentContext = list.current_context;
  const ctx = $('#context-status');
  ctx.textContent = `docker context: ${list.current_context || 'default'}`;
  pickEngineMachine();
  if (S.page === 'machines') renderMachines();
  else if (S.page !== 'settings') renderEnginePicker();
}

async function loadMachines() {
  try {
    applyMachineList(await invoke('list_machines'));
  } catch (e) {
    reportError('Cannot list machines', e);
  }
}

function stateBadge(state, label) {
  return h('span', { class: `badge ${state}`, 'data-state': state }, label || state);
}

async function machineOp(name, op) {
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

async function removeMachine(m) {
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

async function useMachine(name) {
  try {
    applyMachineList(await invoke('use_machine', { name }));
    toast(name ? `docker now uses machine ${name} (context rmachine-${name})` : 'docker now uses its default context');
  } catch (e) {
    reportError('Cannot switch the docker context', e);
  }
}

let logTimer = null;
async function showMachineLogs(name, kind) {
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
  textDialogOnClose = stop;
  await load(true);
  // The log file is followed by its length (a file check, not the engine).
  logTimer = setInterval(() => load(false), 1000);
}

function renderMachines() {
  const body = $('#machines-body');
  if (!S.machines.length) {
    body.replaceChildren(h('div', { class: 'card empty', id: 'no-machines' },
      h('h2', {}, 'No machines yet'),
      h('p', {}, 'A machine is a small VM that runs the Docker Engine. Create one to run containers.'),
      h('button', { class: 'primary', onclick: () => openCreateForm() }, 'Create a machine')));
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
    actions.push(h('button', { class: 'small', 'data-action': 'logs', onclick: () => showMachineLogs(m.name, 'console') }, 'Logs'));
    actions.push(h('button', { class: 'small danger', 'data-action': 'delete', disabled: busy, 'aria-label': `Delete ${m.name}`, onclick: () => removeMachine(m) }, 'Delete'));
    return h('tr', { id: `machine-${m.name}`, 'data-name': m.name, 'data-state': m.state },
      h('td', {}, h('strong', {}, m.name), m.active ? h('span', { class: 'active-tag', title: 'the docker CLI uses this machine' }, 'active') : null),
      h('td', {}, stateBadge(state),
        detail ? h('div', { class: 'detail' }, detail) : null,
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
function firstPaint() {
  if (S.firstPaintSent) return;
  S.firstPaintSent = true;
  requestAnimationFrame(() => requestAnimationFrame(() => invoke('first_paint').catch(() => {})));
}

function openCreateForm() {
  const f = $('#create-form');
  f.hidden = false;
  syncCreateDriver();
  $('#create-name').focus();
}
/** Shows the remote host's fields for an ssh machine, the VM's sizes otherwise. */
function syncCreateDriver() {
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

// ---------- engine pages ----------
function runningMachines() { return S.machines.filter((m) => m.state === 'running'); }

function pickEngineMachine() {
  const names = S.machines.map((m) => m.name);
  if (S.engineMachine && names.includes(S.engineMachine)) return;
  const running = runningMachines();
  S.engineMachine = (S.active && names.includes(S.active)) ? S.active
    : running.length ? running[0].name : (names[0] || null);
}

function renderEnginePicker() {
  for (const slot of $$(`#page-${S.page} .engine-picker`)) {
    if (!S.machines.length) { slot.replaceChildren(); continue; }
    const sel = h('select', { id: `machine-picker-${S.page}`, 'aria-label': 'Machine' },
      S.machines.map((m) => h('option', { value: m.name, selected: m.name === S.engineMachine }, `${m.name} (${m.state})`)));
    sel.addEventListener('change', () => { S.engineMachine = sel.value; refreshPage(); });
    slot.replaceChildren(h('label', { class: 'muted' }, 'Machine '), sel);
  }
}

/** The body to show instead of a list when the engine cannot be reached; null if it can. */
function engineUnavailable() {
  const m = S.machines.find((x) => x.name === S.engineMachine);
  if (!m) {
    return h('div', { class: 'card empty' }, h('h2', {}, 'No machine'),
      h('p', {}, 'Containers run in a machine. Create and start one first.'),
      h('button', { class: 'primary', onclick: () => { showPage('machines'); openCreateForm(); } }, 'Create a machine'));
  }
  if (m.state === 'running') return null;
  const starting = m.state === 'starting' || (S.progress[m.name] && S.progress[m.name].op !== 'stop');
  return h('div', { class: 'card empty', id: 'engine-stopped' },
    h('h2', {}, starting ? `Machine ${m.name} is starting…` : `Machine ${m.name} is ${m.state}`),
    h('p', {}, starting ? (S.progress[m.name]?.detail || m.detail || 'booting the VM') : 'Its Docker engine runs only while the machine runs.'),
    starting ? null : h('button', { class: 'primary', id: 'engine-start', onclick: () => machineOp(m.name, 'start').then(refreshPage) }, `Start ${m.name}`));
}

const loadSeq = {};
async function engineLoad(page, cmd, render) {
  renderEnginePicker();
  const body = $(`#${page}-body`);
  const blocked = engineUnavailable();
  if (blocked) { body.replaceChildren(blocked); return; }
  const seq = (loadSeq[page] = (loadSeq[page] || 0) + 1);
  try {
    const data = await invoke(cmd, { machine: S.engineMachine });
    if (seq !== loadSeq[page] || S.page !== page) return;
    // Keep the focused control's place across a re-render.
    const focusKey = document.activeElement && body.contains(document.activeElement) ? focusId(document.activeElement) : null;
    body.replaceChildren(render(data));
    if (focusKey) { const el = body.querySelector(focusKey); if (el) el.focus(); }
  } catch (e) {
    if (seq !== loadSeq[page]) return;
    if (e && e.kind === 'not_running') { await loadMachines(); body.replaceChildren(engineUnavailable() || h('p', {}, errMsg(e))); return; }
    body.replaceChildren(h('div', { class: 'card' }, h('p', { class: 'detail error' }, errMsg(e)),
      h('button', { onclick: () => refreshPage() }, 'Retry')));
  }
}
function focusId(el) {
  const row = el.closest('tr[data-key]');
  const action = el.dataset.action;
  return row && action ? `tr[data-key="${CSS.escape(row.dataset.key)}"] [data-action="${action}"]` : null;
}

async function containerAction(c, action) {
  if (action === 'remove') {
    const ok = await confirmDialog(`Remove container ${c.name}?`, `The container and its anonymous volumes are deleted${c.state === 'running' ? ' (it is running: it will be killed)' : ''}.`, 'Remove');
    if (!ok) return;
  }
  const row = $(`tr[data-key="${CSS.escape(c.id)}"]`);
  if (row) for (const b of row.querySelectorAll('button')) b.disabled = true;
  try {
    await invoke('container_action', { machine: S.engineMachine, id: c.id, action });
  } catch (e) {
    reportError(`Cannot ${action} ${c.name}`, e);
  }
  loadContainers();
}

async function showContainerLogs(c) {
  const machine = S.engineMachine;
  S.logsFollowing = c.id;
  textDialog(`Logs of ${c.name}`, '');
  textDialogOnClose = () => { S.logsFollowing = null; invoke('stop_container_logs').catch(() => {}); };
  try {
    await invoke('follow_container_logs', { machine, id: c.id });
  } catch (e) {
    appendText(errMsg(e));
  }
}

async function inspectContainer(c) {
  try {
    textDialog(`Inspect ${c.name}`, await invoke('inspect_container', { machine: S.engineMachine, id: c.id }));
  } catch (e) {
    reportError(`Cannot inspect ${c.name}`, e);
  }
}

function portLinks(ports) {
  if (!ports.length) return h('span', { class: 'muted' }, '–');
  return ports.map((p) => p.url
    ? h('a', { href: p.url, class: 'port', onclick: (e) => { e.preventDefault(); invoke('open_url', { url: p.url }).catch((er) => reportError('Cannot open the browser', er)); } }, `${p.host_port}→${p.container_port}`, ' ')
    : h('span', { class: 'tag' }, `${p.host_port}→${p.container_port}/${p.proto}`));
}

function containerRow(c) {
  const running = c.state === 'running';
  return h('tr', { 'data-key': c.id, 'data-name': c.name, 'data-state': c.state },
    h('td', {}, h('strong', {}, c.name), c.compose_service ? h('div', { class: 'detail' }, `service ${c.compose_service}`) : null,
      h('div', { class: 'detail mono' }, c.id.slice(0, 12))),
    h('td', { class: 'mono' }, c.image),
    h('td', {}, stateBadge(c.state), h('div', { class: 'detail' }, c.status)),
    h('td', {}, portLinks(c.ports)),
    h('td', { class: 'actions' },
      running
        ? h('button', { class: 'small', 'data-action': 'stop', onclick: () => containerAction(c, 'stop') }, 'Stop')
        : h('button', { class: 'small primary', 'data-action': 'start', onclick: () => containerAction(c, 'start') }, 'Start'),
      h('button', { class: 'small', 'data-action': 'restart', onclick: () => containerAction(c, 'restart') }, 'Restart'),
      h('button', { class: 'small', 'data-action': 'logs', onclick: () => showContainerLogs(c) }, 'Logs'),
      h('button', { class: 'small', 'data-action': 'inspect', onclick: () => inspectContainer(c) }, 'Inspect'),
      h('button', { class: 'small danger', 'data-action': 'remove', 'aria-label': `Remove ${c.name}`, onclick: () => containerAction(c, 'remove') }, 'Remove')));
}

function loadContainers() {
  return engineLoad('containers', 'list_containers', (groups) => {
    if (!groups.length) {
      return h('div', { class: 'card empty' }, h('h2', {}, 'No containers'),
        h('p', {}, `Run one with docker: the context rmachine-${S.engineMachine} points at this machine.`));
    }
    return h('div', { id: 'containers-list' }, groups.map((g) => {
      const running = g.containers.filter((c) => c.state === 'running').length;
      return h('section', { class: 'group', 'aria-label': g.project ? `Compose project ${g.project}` : 'Standalone containers' },
        h('div', { class: 'group-head' }, h('h2', {}, g.project ? `${g.project}` : 'Containers'),
          h('span', { class: 'muted' }, g.project ? `compose project · ${running}/${g.containers.length} running` : `${running}/${g.containers.length} running`)),
        h('table', {},
          h('thead', {}, h('tr', {}, ['Name', 'Image', 'State', 'Ports', ''].map((c) => h('th', { scope: 'col' }, c)))),
          h('tbody', {}, g.containers.map(containerRow))));
    }));
  });
}

function loadImages() {
  return engineLoad('images', 'list_images', (images) => {
    if (!images.length) return h('div', { class: 'card empty' }, h('h2', {}, 'No images'), h('p', {}, 'Import a tarball, or pull and build with docker.'));
    return h('table', { id: 'images-table' },
      h('thead', {}, h('tr', {}, ['Tags', 'ID', 'Size', 'Created', 'Used by', ''].map((c) => h('th', { scope: 'col' }, c)))),
      h('tbody', {}, images.map((i) => h('tr', { 'data-key': i.id },
        h('td', {}, i.tags.length ? i.tags.map((t) => h('span', { class: 'tag' }, t)) : h('span', { class: 'muted' }, '<none>')),
        h('td', { class: 'mono' }, i.id.replace('sha256:', '').slice(0, 12)),
        h('td', { class: 'num' }, fmtBytes(i.size)),
        h('td', {}, fmtAgo(i.created)),
        h('td', { class: 'num' }, i.containers >= 0 ? i.containers : '–'),
        h('td', { class: 'actions' }, h('button', { class: 'small danger', 'data-action': 'remove', 'aria-label': `Remove image ${i.tags[0] || i.id}`, onclick: () => removeImage(i) }, 'Remove'))))));
  });
}

async function removeImage(i) {
  const name = i.tags[0] || i.id.slice(7, 19);
  if (!await confirmDialog(`Remove image ${name}?`, i.tags.length > 1 ? `All its tags are removed: ${i.tags.join(', ')}.` : 'The image is deleted from this machine.', 'Remove')) return;
  try {
    await invoke('remove_image', { machine: S.engineMachine, id: i.id, force: i.tags.length > 1 });
  } catch (e) {
    reportError(`Cannot remove ${name}`, e);
  }
  loadImages();
}

$('#prune-images').addEventListener('click', async () => {
  if (!S.engineMachine) return;
  if (!await confirmDialog('Prune images?', 'Every image that no container uses is deleted (docker image prune -a).', 'Prune')) return;
  try {
    const r = await invoke('prune_images', { machine: S.engineMachine });
    toast(`Removed ${r.removed} image layers, reclaimed ${fmtBytes(r.reclaimed_bytes)}`);
  } catch (e) { reportError('Cannot prune images', e); }
  loadImages();
});

function importFormat() { return $('#import-form input[name="format"]:checked').value; }
function syncImportForm() { $('#import-ref-label').hidden = importFormat() !== 'rootfs'; }
for (const r of $$('#import-form input[name="format"]')) r.addEventListener('change', syncImportForm);
$('#import-image').addEventListener('click', () => { syncImportForm(); $('#import-dialog').showModal(); });
$('#import-browse').addEventListener('click', async () => {
  try {
    const p = await invoke('pick_tarball');
    if (p) $('#import-path').value = p;
  } catch (e) { reportError('Cannot open the file chooser', e); }
});
$('#import-dialog').addEventListener('close', async () => {
  if ($('#import-dialog').returnValue !== 'ok') return;
  const path = $('#import-path').value.trim();
  if (!path) return;
  const request = importFormat() === 'rootfs'
    ? { format: 'rootfs', path, reference: $('#import-ref').value.trim() || 'imported:latest' }
    : { format: 'archive', path };
  toast(`Importing ${path}…`);
  try {
    const said = await invoke('import_image', { machine: S.engineMachine, request });
    toast(`Imported ${said || path}`);
  } catch (e) { reportError('Cannot import', e); }
  loadImages();
});

function loadVolumes() {
  return engineLoad('volumes', 'list_volumes', (vols) => {
    if (!vols.length) return h('div', { class: 'card empty' }, h('h2', {}, 'No volumes'));
    return h('table', { id: 'volumes-table' },
      h('thead', {}, h('tr', {}, ['Name', 'Driver', 'Compose project', 'Created', ''].map((c) => h('th', { scope: 'col' }, c)))),
      h('tbody', {}, vols.map((v) => h('tr', { 'data-key': v.name },
        h('td', { class: 'mono' }, v.name),
        h('td', {}, v.driver),
        h('td', {}, v.compose_project || h('span', { class: 'muted' }, '–')),
        h('td', {}, v.created ? v.created.replace('T', ' ').slice(0, 19) : '–'),
        h('td', { class: 'actions' }, h('button', { class: 'small danger', 'data-action': 'remove', 'aria-label': `Remove volume ${v.name}`, onclick: () => removeVolume(v) }, 'Remove'))))));
  });
}

async function removeVolume(v) {
  if (!await confirmDialog(`Remove volume ${v.name}?`, 'Its data is deleted.', 'Remove')) return;
  try { await invoke('remove_volume', { machine: S.engineMachine, name: v.name }); } catch (e) { reportError(`Cannot remove ${v.name}`, e); }
  loadVolumes();
}

$('#prune-volumes').addEventListener('click', async () => {
  if (!S.engineMachine) return;
  if (!await confirmDialog('Prune volumes?', 'Every anonymous volume that no container uses is deleted (docker volume prune).', 'Prune')) return;
  try {
    const r = await invoke('prune_volumes', { machine: S.engineMachine });
    toast(`Removed ${r.removed} volumes, reclaimed ${fmtBytes(r.reclaimed_bytes)}`);
  } catch (e) { reportError('Cannot prune volumes', e); }
  loadVolumes();
});

function loadNetworks() {
  return engineLoad('networks', 'list_networks', (nets) => h('table', { id: 'networks-table' },
    h('thead', {}, h('tr', {}, ['Name', 'Driver', 'Scope', 'Subnets', 'ID'].map((c) => h('th', { scope: 'col' }, c)))),
    h('tbody', {}, nets.map((n) => h('tr', { 'data-key': n.id },
      h('td', {}, h('strong', {}, n.name), n.internal ? h('span', { class: 'muted' }, ' (internal)') : null),
      h('td', {}, n.driver),
      h('td', {}, n.scope),
      h('td', { class: 'mono' }, n.subnets.join(', ') || '–'),
      h('td', { class: 'mono' }, n.id.slice(0, 12)))))));
}

// ---------- settings ----------
async function loadDefaults() {
  try {
    const d = await invoke('get_defaults');
    $('#defaults-file').textContent = d.defaults_file;
    $('#defaults-driver').value = d.settings.driver || '';
    $('#defaults-cpus').value = d.settings.cpus ?? '';
    $('#defaults-cpus').placeholder = `${d.builtin_cpus} (host has ${d.host_cpus})`;
    $('#defaults-cpus').max = d.host_cpus;
    $('#defaults-memory').value = d.settings.memory_mib ?? '';
    $('#defaults-memory').placeholder = `${d.builtin_memory_mib}`;
    $('#defaults-disk').value = d.settings.disk_size_gib ?? '';
    $('#defaults-disk').placeholder = `${d.builtin_disk_size_gib}`;
  } catch (e) { reportError('Cannot read the defaults', e); }
}
$('#defaults-form').addEventListener('submit', async (e) => {
  e.preventDefault();
  const num = (id) => { const v = $(id).value.trim(); return v === '' ? null : Number(v); };
  const defaults = { driver: $('#defaults-driver').value || null, cpus: num('#defaults-cpus'), memory_mib: num('#defaults-memory'), disk_size_gib: num('#defaults-disk') };
  try {
    await invoke('set_defaults', { defaults });
    toast('Defaults saved');
    loadDefaults();
  } catch (err) { reportError('Cannot save the defaults', err); }
});

// ---------- live updates ----------
let engineRefresh = null;
function scheduleEngineRefresh() {
  if (engineRefresh) return;
  engineRefresh = setTimeout(() => { engineRefresh = null; if (['containers', 'images', 'volumes', 'networks'].includes(S.page)) refreshPage(); }, 250);
}

listen('machines-changed', (list) => {
  const before = S.machines.find((m) => m.name === S.engineMachine)?.state;
  applyMachineList(list);
  const after = S.machines.find((m) => m.name === S.engineMachine)?.state;
  if (before !== after && S.page !== 'machines' && S.page !== 'settings') refreshPage();
});
listen('machine-progress', (p) => {
  if (p.done) { delete S.progress[p.name]; } else { S.progress[p.name] = { op: p.op, detail: p.detail }; }
  if (S.page === 'machines') renderMachines();
  else if (p.name === S.engineMachine && S.page !== 'settings') refreshPage();
});
listen('engine-event', (ev) => {
  if (ev.machine === S.engineMachine) scheduleEngineRefresh();
});
listen('container-log', (chunk) => {
  if (chunk.id !== S.logsFollowing) return;
  appendText(chunk.text);
  if (chunk.end) appendText('\n[end of log stream]\n');
});

// ---------- start ----------
loadMachines();
