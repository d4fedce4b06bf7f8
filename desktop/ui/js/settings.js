// The Settings page: defaults for new machines, and each machine's engine settings
// (its daemon.json, as Docker Desktop's "Docker Engine" pane).
import { S, $, h, invoke, toast, reportError, errMsg } from './core.js';
import { registerView } from './nav.js';
import { machineOp } from './machines.js';

export async function loadDefaults() {
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

// ---------- engine settings ----------
function showEngine(e) {
  $('#engine-allowed').textContent = e.allowed.join(', ');
  $('#engine-json').value = e.json;
  $('#engine-json').disabled = !e.editable;
  $('#engine-save').disabled = !e.editable;
  $('#engine-status').textContent = e.editable ? '' : `${e.machine} is an ssh machine: its engine's settings are its host's /etc/docker/daemon.json.`;
  $('#engine-restart').hidden = true;
}

export async function loadEngine() {
  const select = $('#engine-machine');
  const names = S.machines.map((m) => m.name);
  const keep = names.includes(select.value) ? select.value : (S.engineMachine && names.includes(S.engineMachine) ? S.engineMachine : names[0]);
  select.replaceChildren(...names.map((n) => h('option', { value: n }, n)));
  $('#engine-form').hidden = names.length === 0;
  if (!keep) return;
  select.value = keep;
  try {
    showEngine(await invoke('get_engine_settings', { machine: keep }));
  } catch (e) { reportError(`Cannot read the engine settings of ${keep}`, e); }
}
$('#engine-machine').addEventListener('change', loadEngine);
$('#engine-form').addEventListener('submit', async (e) => {
  e.preventDefault();
  const machine = $('#engine-machine').value;
  const status = $('#engine-status');
  try {
    const saved = await invoke('set_engine_settings', { machine, json: $('#engine-json').value });
    showEngine(saved);
    status.classList.remove('error');
    status.textContent = saved.running ? `Saved. ${machine} runs: the settings apply when it restarts.` : `Saved. They apply when ${machine} starts.`;
    $('#engine-restart').hidden = !saved.running;
    toast(`Engine settings of ${machine} saved`);
  } catch (err) {
    // The editor keeps the text, so the setting named can be fixed.
    status.classList.add('error');
    status.textContent = `Not saved: ${errMsg(err)}`;
  }
});
$('#engine-restart').addEventListener('click', async () => {
  const machine = $('#engine-machine').value;
  $('#engine-restart').hidden = true;
  $('#engine-status').textContent = `Restarting ${machine}…`;
  await machineOp(machine, 'restart');
  loadEngine();
});

registerView('settings', { load: () => { loadDefaults(); loadEngine(); } });
