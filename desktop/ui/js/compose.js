// The Compose dialog: `docker compose up -d` or `down` of a chosen compose file on the
// machine the Containers page shows (the compose plugin of the docker CLI does it, with
// DOCKER_HOST on the machine's socket), its output streamed in. The project then shows as
// a group on the Containers page; a group's Down takes it down by name. Closing the dialog
// stops a run under way.
import { S, $, invoke, channel, confirmDialog, errMsg, setStatus, appendOutput } from './core.js';

let current = null; // { stream, closed }

const status = (text, state) => setStatus($('#compose-status'), text, state);
const output = (line) => appendOutput($('#compose-output'), `${line}\n`);

function busy(on) {
  $('#compose-up').disabled = on;
  $('#compose-down').disabled = on;
}

function stop() {
  if (current) {
    current.closed = true;
    if (current.stream !== null) invoke('close_compose', { stream: current.stream }).catch(() => {});
  }
  current = null;
  busy(false);
}

async function run(action) {
  if (current) return;
  const machine = S.engineMachine;
  if (!machine) { status('No machine: create and start one on the Machines page.', 'error'); return; }
  const request = { action, file: $('#compose-file').value.trim(), project: $('#compose-project').value.trim() };
  const me = { stream: null, closed: false };
  current = me;
  busy(true);
  $('#compose-output').textContent = '';
  status(action === 'up' ? 'bringing the project up…' : 'taking the project down…', 'running');
  const events = channel((ev) => {
    if (me.closed) return;
    if (ev.kind === 'output') output(ev.text);
    else {
      if (current === me) { current = null; busy(false); }
      if (ev.kind === 'done') status(action === 'up' ? 'Up: the project runs (see it grouped under Containers)' : 'Down: the project was removed', 'done');
      else status(ev.message, 'error');
    }
  });
  try {
    const id = await invoke('open_compose', { machine, request, events });
    if (me.closed) { invoke('close_compose', { stream: id }).catch(() => {}); return; }
    me.stream = id;
  } catch (e) {
    if (current === me) { current = null; busy(false); }
    status(errMsg(e), 'error');
  }
}

/** Opens the dialog (a project's Down passes its name and `down: true`). */
export async function openCompose({ file = '', project = '', down = false } = {}) {
  if (down && !await confirmDialog(`Take compose project ${project} down?`, 'Its containers and networks are stopped and removed (docker compose down); its volumes stay.', 'Down')) return;
  const d = $('#compose-dialog');
  if (!current) {
    if (file || down) $('#compose-file').value = file;
    if (project || down) $('#compose-project').value = project;
    $('#compose-output').textContent = '';
    status('', null);
  }
  $('#compose-title').textContent = `Compose on ${S.engineMachine}`;
  if (!d.open) d.showModal();
  if (down) run('down');
}

$('#compose-form').addEventListener('submit', (e) => { e.preventDefault(); run('up'); });
$('#compose-down').addEventListener('click', () => run('down'));
$('#compose-browse').addEventListener('click', async () => {
  try {
    const p = await invoke('pick_compose_file');
    if (p) $('#compose-file').value = p;
  } catch (e) { status(errMsg(e), 'error'); }
});
$('#compose-close').addEventListener('click', () => $('#compose-dialog').close());
$('#compose-dialog').addEventListener('close', stop);
