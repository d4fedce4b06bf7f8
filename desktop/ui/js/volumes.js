// The Volumes and Networks pages.
import { S, $, h, invoke, toast, reportError, confirmDialog, fmtBytes } from './core.js';
import { registerView } from './nav.js';
import { engineLoad } from './engine.js';

export function loadVolumes() {
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

export async function removeVolume(v) {
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

export function loadNetworks() {
  return engineLoad('networks', 'list_networks', (nets) => h('table', { id: 'networks-table' },
    h('thead', {}, h('tr', {}, ['Name', 'Driver', 'Scope', 'Subnets', 'ID'].map((c) => h('th', { scope: 'col' }, c)))),
    h('tbody', {}, nets.map((n) => h('tr', { 'data-key': n.id },
      h('td', {}, h('strong', {}, n.name), n.internal ? h('span', { class: 'muted' }, ' (internal)') : null),
      h('td', {}, n.driver),
      h('td', {}, n.scope),
      h('td', { class: 'mono' }, n.subnets.join(', ') || '–'),
      h('td', { class: 'mono' }, n.id.slice(0, 12)))))));
}

registerView('volumes', { load: loadVolumes, engine: true });
registerView('networks', { load: loadNetworks, engine: true });
