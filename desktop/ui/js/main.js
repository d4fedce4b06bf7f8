// rmachine Desktop UI: plain ES modules over Tauri commands and events (no bundler, no
// network; third-party libraries are vendored in ../vendor). Each page is a view module
// that registers itself with nav.js; this file wires the app's live events to them.
import './locale.js';
import { S, listen } from './core.js';
import { refreshPage, showsEngine } from './nav.js';
import { applyMachineList, loadMachines, renderMachines } from './machines.js';
import './containers.js';
import './images.js';
import './volumes.js';
import './settings.js';
import './container.js';
import './logs.js';
import './build.js';
import { showMachine } from './machine.js';

// ---------- live updates ----------
let engineRefresh = null;
export function scheduleEngineRefresh() {
  if (engineRefresh) return;
  engineRefresh = setTimeout(() => { engineRefresh = null; if (showsEngine()) refreshPage(); }, 250);
}

listen('machines-changed', (list) => {
  const before = S.machines.find((m) => m.name === S.engineMachine)?.state;
  applyMachineList(list);
  const after = S.machines.find((m) => m.name === S.engineMachine)?.state;
  if ((before !== after && showsEngine()) || S.page === 'machine') refreshPage();
});
listen('machine-progress', (p) => {
  if (p.done) { delete S.progress[p.name]; } else { S.progress[p.name] = { op: p.op, detail: p.detail }; }
  if (S.page === 'machines') renderMachines();
  else if (p.name === S.engineMachine && showsEngine()) refreshPage();
});
listen('engine-event', (ev) => {
  if (ev.machine === S.engineMachine) scheduleEngineRefresh();
});
// The tray's "Open window" on a machine: its page.
listen('tray-show-machine', (name) => showMachine(name));

// ---------- start ----------
loadMachines();
