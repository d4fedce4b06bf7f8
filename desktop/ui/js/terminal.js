// A terminal dialog (xterm.js, vendored) over a session the app opens: a shell in a
// container or in a machine's guest. Keys go out in order (one call in flight, the rest
// batched behind it); output, then the exit status or the failure, come on the session's
// channel. Closing the dialog closes the session.
import { Terminal } from '../vendor/xterm.mjs';
import { FitAddon } from '../vendor/addon-fit.mjs';
import { $, invoke, channel, errMsg } from './core.js';

let current = null;

function cssVar(name) { return getComputedStyle(document.documentElement).getPropertyValue(name).trim(); }

/**
 * Opens the terminal dialog.
 * @param {string} title
 * @param {(size: {rows: number, cols: number}, events: object) => Promise<number>} open
 *        starts the session, returns its id
 */
export async function openTerminal(title, open) {
  if (current) current.close();
  const dialog = $('#terminal-dialog');
  const host = $('#terminal');
  const status = $('#terminal-status');
  $('#terminal-title').textContent = title;
  host.replaceChildren();
  delete host.dataset.exit;
  delete host.dataset.error;
  status.textContent = 'connecting…';
  status.className = 'detail';
  dialog.showModal();

  const term = new Terminal({
    cursorBlink: true,
    fontFamily: 'ui-monospace, "DejaVu Sans Mono", "Cascadia Mono", Menlo, monospace',
    fontSize: 13,
    scrollback: 5000,
    theme: { background: cssVar('--code-bg') || '#0b0e13', foreground: cssVar('--text') || '#e6edf3' },
  });
  const fit = new FitAddon();
  term.loadAddon(fit);
  term.open(host);
  fit.fit();
  const showSize = () => { host.dataset.rows = String(term.rows); host.dataset.cols = String(term.cols); };
  showSize();

  let session = null;
  let ended = false;
  let pending = '';
  let sending = false;
  const fail = (message) => {
    ended = true;
    host.dataset.error = message;
    status.textContent = message;
    status.className = 'detail error';
  };
  const pump = async () => {
    if (sending) return;
    sending = true;
    while (pending && session !== null && !ended) {
      const data = pending;
      pending = '';
      try {
        await invoke('terminal_input', { session, data });
      } catch (e) {
        if (!ended) fail(`Cannot send keys: ${errMsg(e)}`);
      }
    }
    sending = false;
  };
  let resizeTimer = null;
  const sendSize = () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(() => {
      if (session !== null && !ended) invoke('terminal_resize', { session, size: { rows: term.rows, cols: term.cols } }).catch(() => {});
    }, 60);
  };
  term.onData((d) => { if (ended) return; pending += d; pump(); });
  term.onResize(() => { showSize(); sendSize(); });
  const ro = new ResizeObserver(() => { try { fit.fit(); } catch (_) { /* hidden */ } });
  ro.observe(host);

  const events = channel((ev) => {
    if (ev.kind === 'output') term.write(ev.data);
    else if (ev.kind === 'exit') {
      ended = true;
      host.dataset.exit = String(ev.code);
      status.textContent = `exited with status ${ev.code}`;
      status.className = 'detail' + (ev.code === 0 ? '' : ' error');
      term.write(`\r\n\x1b[2m[exited with status ${ev.code}]\x1b[0m\r\n`);
    } else if (ev.kind === 'error') {
      fail(ev.message);
      term.write(`\r\n\x1b[31m[${ev.message}]\x1b[0m\r\n`);
    }
  });

  const me = {
    close() {
      if (current !== me) return;
      current = null;
      ended = true;
      ro.disconnect();
      clearTimeout(resizeTimer);
      if (session !== null) invoke('close_terminal', { session }).catch(() => {});
      term.dispose();
      if (dialog.open) dialog.close();
    },
  };
  current = me;
  try {
    const id = await open({ rows: term.rows, cols: term.cols }, events);
    if (current !== me) { invoke('close_terminal', { session: id }).catch(() => {}); return; }
    session = id;
    if (!ended) status.textContent = 'connected';
    term.focus();
    pump();
  } catch (e) {
    fail(errMsg(e));
  }
}

$('#terminal-close').addEventListener('click', () => current?.close());
const dialog = $('#terminal-dialog');
// Escape belongs to the program in the terminal (vi, less), not to the dialog.
dialog.addEventListener('cancel', (e) => e.preventDefault());
dialog.addEventListener('close', () => current?.close());
