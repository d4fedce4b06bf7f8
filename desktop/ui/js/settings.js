// The Settings page: defaults for new machines.
import { $, invoke, toast, reportError } from './core.js';
import { registerView } from './nav.js';

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

registerView('settings', { load: loadDefaults });
