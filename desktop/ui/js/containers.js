// The Containers page: containers grouped by compose project, their actions and logs.
import { S, $, $$, h, invoke, reportError, confirmDialog, textDialog, stateBadge, fmtBytes } from './core.js';
import { registerView, showPage } from './nav.js';
import { engineLoad } from './engine.js';
import { showContainer, openContainerTerminal } from './container.js';
import { showLogs } from './logs.js';
import { openCompose } from './compose.js';

export async function containerAction(c, action) {
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

export async function inspectContainer(c) {
  try {
    textDialog(`Inspect ${c.name}`, await invoke('inspect_container', { machine: S.engineMachine, id: c.id }));
  } catch (e) {
    reportError(`Cannot inspect ${c.name}`, e);
  }
}

export function portLinks(ports) {
  if (!ports.length) return h('span', { class: 'muted' }, '–');
  return ports.map((p) => p.url
    ? h('a', { href: p.url, class: 'port', onclick: (e) => { e.preventDefault(); invoke('open_url', { url: p.url }).catch((er) => reportError('Cannot open the browser', er)); } }, `${p.host_port}→${p.container_port}`, ' ')
    : h('span', { class: 'tag' }, `${p.host_port}→${p.container_port}/${p.proto}`));
}

export function containerRow(c) {
  const running = c.state === 'running';
  return h('tr', { 'data-key': c.id, 'data-name': c.name, 'data-state': c.state },
    h('td', {}, h('button', { class: 'link', 'data-action': 'details', title: `Charts and terminal of ${c.name}`, onclick: () => showContainer(c) }, h('strong', {}, c.name)), c.compose_service ? h('div', { class: 'detail' }, `service ${c.compose_service}`) : null,
      h('div', { class: 'detail mono' }, c.id.slice(0, 12))),
    h('td', { class: 'mono' }, c.image),
    h('td', {}, stateBadge(c.state), h('div', { class: 'detail' }, c.status)),
    h('td', { class: 'usage num', 'data-usage': 'cpu' }, running ? usageText(c.id, 'cpu') : '–'),
    h('td', { class: 'usage num', 'data-usage': 'mem' }, running ? usageText(c.id, 'mem') : '–'),
    h('td', {}, portLinks(c.ports)),
    h('td', { class: 'actions' },
      running
        ? h('button', { class: 'small', 'data-action': 'stop', onclick: () => containerAction(c, 'stop') }, 'Stop')
        : h('button', { class: 'small primary', 'data-action': 'start', onclick: () => containerAction(c, 'start') }, 'Start'),
      h('button', { class: 'small', 'data-action': 'restart', onclick: () => containerAction(c, 'restart') }, 'Restart'),
      running ? h('button', { class: 'small', 'data-action': 'terminal', onclick: () => openContainerTerminal(S.engineMachine, c) }, 'Terminal') : null,
      h('button', { class: 'small', 'data-action': 'logs', onclick: () => showLogs(S.engineMachine, c) }, 'Logs'),
      h('button', { class: 'small', 'data-action': 'inspect', onclick: () => inspectContainer(c) }, 'Inspect'),
      h('button', { class: 'small danger', 'data-action': 'remove', 'aria-label': `Remove ${c.name}`, onclick: () => containerAction(c, 'remove') }, 'Remove')));
}

// The summary column: each running container's CPU and memory, asked every few seconds
// while the list is shown (one stats document each: no stream is held), stopped when
// the page closes.
const USAGE_PERIOD_MS = 5000;
let usage = { machine: null, byId: new Map() };
let usageTimer = null;
let usageAsking = false;

function usageText(id, what) {
  const u = usage.machine === S.engineMachine ? usage.byId.get(id) : null;
  if (!u) return '…';
  if (what === 'cpu') return `${u.cpu_percent.toFixed(1)} %`;
  return u.mem_limit_bytes ? `${fmtBytes(u.mem_bytes)} / ${fmtBytes(u.mem_limit_bytes)}` : fmtBytes(u.mem_bytes);
}

async function askUsage() {
  if (usageAsking || S.page !== 'containers') return;
  usageAsking = true;
  const machine = S.engineMachine;
  try {
    const rows = await invoke('container_usage', { machine });
    usage = { machine, byId: new Map(rows.map((r) => [r.id, r])) };
    if (S.page !== 'containers' || S.engineMachine !== machine) return;
    for (const row of $$('#containers-list tr[data-key]')) {
      const running = row.dataset.state === 'running';
      for (const cell of row.querySelectorAll('td[data-usage]')) {
        cell.textContent = running ? (usage.byId.has(row.dataset.key) ? usageText(row.dataset.key, cell.dataset.usage) : '–') : '–';
      }
    }
  } catch (e) {
    // The list itself reports an engine that cannot be reached; the column waits.
  } finally {
    usageAsking = false;
  }
}

function stopUsage() {
  if (usageTimer) clearInterval(usageTimer);
  usageTimer = null;
}

export function loadContainers() {
  if (!usageTimer) {
    usageTimer = setInterval(askUsage, USAGE_PERIOD_MS);
    askUsage();
  }
  return engineLoad('containers', 'list_containers', (groups) => {
    if (!groups.length) {
      return h('div', { class: 'card empty' }, h('h2', {}, 'No containers'),
        h('p', {}, `Run one with docker: the context rmachine-${S.engineMachine} points at this machine.`));
    }
    return h('div', { id: 'containers-list' }, groups.map((g) => {
      const running = g.containers.filter((c) => c.state === 'running').length;
      return h('section', { class: 'group', 'aria-label': g.project ? `Compose project ${g.project}` : 'Standalone containers' },
        h('div', { class: 'group-head' }, h('h2', {}, g.project ? `${g.project}` : 'Containers'),
          h('span', { class: 'muted' }, g.project ? `compose project · ${running}/${g.containers.length} running` : `${running}/${g.containers.length} running`),
          g.project ? h('button', { class: 'small', 'data-action': 'compose-down', 'aria-label': `Take compose project ${g.project} down`, onclick: () => openCompose({ project: g.project, down: true }) }, 'Down') : null),
        h('table', {},
          h('thead', {}, h('tr', {}, ['Name', 'Image', 'State', 'CPU', 'Memory', 'Ports', ''].map((c) => h('th', { scope: 'col' }, c)))),
          h('tbody', {}, g.containers.map(containerRow))));
    }));
  });
}

$('#compose-open').addEventListener('click', () => openCompose());
registerView('containers', { load: loadContainers, close: stopUsage, engine: true });
