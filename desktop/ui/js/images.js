// The Images page: the list, removal, prune and import of tarballs.
import { S, $, $$, h, invoke, toast, reportError, confirmDialog, fmtBytes, fmtAgo } from './core.js';
import { registerView } from './nav.js';
import { engineLoad } from './engine.js';
import { openRunDialog } from './run.js';

export function loadImages() {
  return engineLoad('images', 'list_images', (images) => {
    if (!images.length) return h('div', { class: 'card empty' }, h('h2', {}, 'No images'), h('p', {}, 'Build one from a folder, load a saved archive, or pull with docker.'));
    return h('table', { id: 'images-table' },
      h('thead', {}, h('tr', {}, ['Tags', 'ID', 'Size', 'Created', 'Used by', ''].map((c) => h('th', { scope: 'col' }, c)))),
      h('tbody', {}, images.map((i) => h('tr', { 'data-key': i.id, 'data-tags': i.tags.join(' ') },
        h('td', {}, i.tags.length ? i.tags.map((t) => h('span', { class: 'tag' }, t)) : h('span', { class: 'muted' }, '<none>')),
        h('td', { class: 'mono' }, i.id.replace('sha256:', '').slice(0, 12)),
        h('td', { class: 'num' }, fmtBytes(i.size)),
        h('td', {}, fmtAgo(i.created)),
        h('td', { class: 'num' }, i.containers >= 0 ? i.containers : '–'),
        h('td', { class: 'actions' },
          h('button', { class: 'small primary', 'data-action': 'run', 'aria-label': `Run image ${imageRef(i)}`, onclick: () => openRunDialog(S.engineMachine, imageRef(i)) }, 'Run…'),
          h('button', { class: 'small', 'data-action': 'save', 'aria-label': `Save image ${imageRef(i)} to a file`, onclick: () => saveImage(i) }, 'Save…'),
          h('button', { class: 'small danger', 'data-action': 'remove', 'aria-label': `Remove image ${i.tags[0] || i.id}`, onclick: () => removeImage(i) }, 'Remove'))))));
  });
}

/** How the engine is asked for an image: its first tag, else its id. */
export function imageRef(i) { return i.tags[0] || i.id; }

export async function saveImage(i) {
  const ref = imageRef(i);
  const row = $(`tr[data-key="${CSS.escape(i.id)}"]`);
  const btn = row?.querySelector('[data-action="save"]');
  if (btn) { btn.disabled = true; btn.textContent = 'Saving…'; }
  try {
    const saved = await invoke('save_image', { machine: S.engineMachine, reference: ref });
    if (saved) {
      document.body.dataset.lastSaved = saved.path;
      toast(`Saved ${ref} (${fmtBytes(saved.count)}) to ${saved.path}${saved.chosen ? '' : ' (no file chooser can be shown here, so it went to your Downloads folder)'}. Load it on any engine with Load / import… or docker load.`);
    }
  } catch (e) {
    reportError(`Cannot save ${ref}`, e);
  } finally {
    if (btn && btn.isConnected) { btn.disabled = false; btn.textContent = 'Save…'; }
  }
}

export async function removeImage(i) {
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

export function importFormat() { return $('#import-form input[name="format"]:checked').value; }
export function syncImportForm() { $('#import-ref-label').hidden = importFormat() !== 'rootfs'; }
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
  toast(`Loading ${path}…`);
  try {
    const said = await invoke('import_image', { machine: S.engineMachine, request });
    toast(said || `Loaded ${path}`);
  } catch (e) { reportError(`Cannot load ${path}`, e); }
  loadImages();
});

registerView('images', { load: loadImages, engine: true });
