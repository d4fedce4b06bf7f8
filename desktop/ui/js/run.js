// The Run dialog: an image run as a new container with a name, published ports, volumes
// (host folders, which must be shared with the machine: the machine's proxy refuses
// others and says how to share them) and environment. The app checks every field and the
// engine runs it; an error keeps the dialog open, shown under the form, so it can be fixed.
import { $, invoke, toast, errMsg } from './core.js';
import { showLogs } from './logs.js';

let target = null; // { machine, image }

export function openRunDialog(machine, image) {
  target = { machine, image };
  $('#run-title').textContent = `Run ${image}`;
  $('#run-image').value = image;
  for (const id of ['#run-name', '#run-ports', '#run-volumes', '#run-env', '#run-command']) $(id).value = '';
  setError('');
  $('#run-submit').disabled = false;
  $('#run-dialog').showModal();
  $('#run-name').focus();
}

function setError(text) {
  const el = $('#run-error');
  el.textContent = text;
  el.hidden = !text;
}

$('#run-add-folder').addEventListener('click', async () => {
  try {
    const folder = await invoke('pick_folder');
    if (!folder) return;
    const v = $('#run-volumes');
    const base = folder.split(/[\\/]/).filter(Boolean).pop() || 'data';
    v.value = `${v.value.replace(/\s*$/, '')}${v.value.trim() ? '\n' : ''}${folder}:/${base}`;
    v.focus();
  } catch (e) {
    setError(errMsg(e));
  }
});

$('#run-cancel').addEventListener('click', () => $('#run-dialog').close());

$('#run-form').addEventListener('submit', async (e) => {
  e.preventDefault();
  if (!target) return;
  const t = target;
  const form = {
    image: t.image,
    name: $('#run-name').value.trim(),
    ports: $('#run-ports').value,
    volumes: $('#run-volumes').value,
    env: $('#run-env').value,
    command: $('#run-command').value,
  };
  setError('');
  $('#run-submit').disabled = true;
  $('#run-submit').textContent = 'Starting…';
  try {
    const started = await invoke('run_image', { machine: t.machine, form });
    $('#run-dialog').close();
    toast(`Started ${started.name} from ${t.image}`);
    showLogs(t.machine, { id: started.id, name: started.name, state: 'running' });
  } catch (err) {
    setError(errMsg(err));
  } finally {
    $('#run-submit').disabled = false;
    $('#run-submit').textContent = 'Run';
  }
});
