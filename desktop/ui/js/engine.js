// What the engine pages share: the machine picker, the "machine not running" offer and
// loading a list from the machine's engine.
import { S, $, $$, h, invoke, errMsg } from './core.js';
import { refreshPage, showPage } from './nav.js';
import { machineOp, openCreateForm, loadMachines } from './machines.js';

export function runningMachines() { return S.machines.filter((m) => m.state === 'running'); }

export function pickEngineMachine() {
  const names = S.machines.map((m) => m.name);
  if (S.engineMachine && names.includes(S.engineMachine)) return;
  const running = runningMachines();
  S.engineMachine = (S.active && names.includes(S.active)) ? S.active
    : running.length ? running[0].name : (names[0] || null);
}

export function renderEnginePicker() {
  for (const slot of $$(`#page-${S.page} .engine-picker`)) {
    if (!S.machines.length) { slot.replaceChildren(); continue; }
    const sel = h('select', { id: `machine-picker-${S.page}`, 'aria-label': 'Machine' },
      S.machines.map((m) => h('option', { value: m.name, selected: m.name === S.engineMachine }, `${m.name} (${m.state})`)));
    sel.addEventListener('change', () => { S.engineMachine = sel.value; refreshPage(); });
    slot.replaceChildren(h('label', { class: 'muted' }, 'Machine '), sel);
  }
}

/** The body to show instead of a list when the engine cannot be reached; null if it can. */
export function engineUnavailable() {
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
export async function engineLoad(page, cmd, render) {
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
export function focusId(el) {
  const row = el.closest('tr[data-key]');
  const action = el.dataset.action;
  return row && action ? `tr[data-key="${CSS.escape(row.dataset.key)}"] [data-action="${action}"]` : null;
}