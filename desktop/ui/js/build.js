// The Build view: an image built from a folder (its Dockerfile, build arguments and a
// tag), the engine's output streamed in as it goes. The build is a stream of this view:
// leaving the view stops it (the engine cancels a build whose client went away).
import { S, $, h, invoke, channel, toast, errMsg, fmtBytes, setStatus, appendOutput } from './core.js';
import { registerView, showPage } from './nav.js';
import { renderEnginePicker } from './engine.js';
import { openRunDialog } from './run.js';

let view = null; // { machine, stream, opening, closed }
let current = null; // the build under way: { stream, view }

const status = (text, kind) => setStatus($('#build-status'), text, kind);
const output = (text) => appendOutput($('#build-output'), text);

function setBuilding(on) {
  $('#build-submit').disabled = on;
  $('#build-stop').hidden = !on;
  for (const el of $('#build-form').querySelectorAll('input, textarea')) el.readOnly = on;
}

function stopBuild() {
  if (current?.stream != null) invoke('close_build', { stream: current.stream }).catch(() => {});
  current = null;
  setBuilding(false);
}

async function start() {
  const v = view;
  if (!v || current) return;
  if (!S.engineMachine) { status('No machine to build on: create and start one on the Machines page.', 'error'); return; }
  const form = {
    folder: $('#build-folder').value.trim(),
    dockerfile: $('#build-dockerfile').value.trim(),
    tag: $('#build-tag').value.trim(),
    build_args: $('#build-args').value,
    no_cache: $('#build-no-cache').checked,
  };
  $('#build-output').textContent = '';
  $('#build-result').replaceChildren();
  const me = { stream: null, view: v };
  current = me;
  setBuilding(true);
  status('sending the build context…', 'building');
  const machine = S.engineMachine;
  const events = channel((ev) => {
    if (current !== me || view !== v) return;
    if (ev.kind === 'context') status(`sending the build context: ${fmtBytes(ev.bytes_sent)}…`, 'building');
    else if (ev.kind === 'context_done') {
      output(`Sent the build context: ${ev.files} files, ${fmtBytes(ev.bytes)}${ev.dockerignore ? ` (${ev.ignored} left out by .dockerignore)` : ''}\n`);
      status('building…', 'building');
    } else if (ev.kind === 'output') output(ev.text);
    else if (ev.kind === 'done') {
      current = null;
      setBuilding(false);
      status(`Built ${ev.tag}`, 'done');
      $('#build-output').dataset.imageId = ev.image_id;
      $('#build-result').replaceChildren(
        h('span', {}, 'Built ', h('strong', {}, ev.tag), h('span', { class: 'mono muted' }, ` ${ev.image_id.replace('sha256:', '').slice(0, 12)}`)),
        h('button', { type: 'button', class: 'primary', id: 'build-run', onclick: () => openRunDialog(machine, ev.tag) }, 'Run…'),
        h('button', { type: 'button', id: 'build-show', onclick: () => showPage('images') }, 'Show in Images'));
      toast(`Built ${ev.tag}`);
    } else if (ev.kind === 'failed') {
      current = null;
      setBuilding(false);
      status(ev.message, 'error');
    }
  });
  try {
    const id = await invoke('open_build', { machine, form, events });
    if (current !== me || view !== v || v.closed) { invoke('close_build', { stream: id }).catch(() => {}); return; }
    me.stream = id;
  } catch (e) {
    if (current === me) { current = null; setBuilding(false); }
    status(errMsg(e), 'error');
  }
}

function load() {
  close();
  view = { closed: false };
  renderEnginePicker();
  setBuilding(false);
  if (!$('#build-status').dataset.state || $('#build-status').dataset.state === 'building') status('', null);
}

function close() {
  if (view) view.closed = true;
  if (current) { stopBuild(); status('The build was stopped: the view was left while it ran.', 'error'); }
  view = null;
}

$('#build-form').addEventListener('submit', (e) => { e.preventDefault(); start(); });
$('#build-stop').addEventListener('click', () => { stopBuild(); status('Build stopped.', 'error'); });
$('#build-browse').addEventListener('click', async () => {
  try {
    const p = await invoke('pick_folder');
    if (p) $('#build-folder').value = p;
  } catch (e) { status(errMsg(e), 'error'); }
});
$('#build-back').addEventListener('click', () => showPage('images'));
$('#build-image').addEventListener('click', () => showPage('build'));
registerView('build', { load, refresh: () => renderEnginePicker(), close, engine: true, nav: 'images' });
