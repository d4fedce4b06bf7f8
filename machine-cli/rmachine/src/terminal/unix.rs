use rustix::termios::{self, OptionalActions, Termios};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

use super::Event;

/// Signals forwarded to a command that runs without a terminal, with their numbers.
const FORWARDED: [(SignalKind, u8); 3] = [
    (SignalKind::interrupt(), 2),
    (SignalKind::terminate(), 15),
    (SignalKind::quit(), 3),
];

/// The window's rows and columns, if stdout or stdin is a terminal.
pub fn size() -> Option<(u16, u16)> {
    let size = termios::tcgetwinsize(std::io::stdout())
        .or_else(|_| termios::tcgetwinsize(std::io::stdin()))
        .ok()?;
    (size.ws_row > 0 && size.ws_col > 0).then_some((size.ws_row, size.ws_col))
}

/// The terminal in raw mode until this is dropped.
pub struct RawMode {
    saved: Termios,
}

impl RawMode {
    pub fn enter() -> std::io::Result<RawMode> {
        let saved = termios::tcgetattr(std::io::stdin())?;
        let mut raw = saved.clone();
        raw.make_raw();
        termios::tcsetattr(std::io::stdin(), OptionalActions::Flush, &raw)?;
        Ok(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // Nothing to do about a failure here; the user can run `reset`.
        let _ = termios::tcsetattr(std::io::stdin(), OptionalActions::Flush, &self.saved);
    }
}

fn forward(kind: SignalKind, event: Event, tx: &mpsc::Sender<Event>) -> std::io::Result<()> {
    let mut stream = signal(kind)?;
    let tx = tx.clone();
    tokio::spawn(async move {
        while stream.recv().await.is_some() {
            if tx.send(event).await.is_err() {
                return;
            }
        }
    });
    Ok(())
}

/// The session's events: window changes on a terminal (SIGWINCH), interrupts to forward
/// without one (on a terminal Ctrl-C is a byte the guest's terminal turns into SIGINT),
/// and SIGHUP. Needs a tokio runtime.
pub fn watch(tty: bool) -> std::io::Result<mpsc::Receiver<Event>> {
    let (tx, rx) = mpsc::channel(8);
    if tty {
        forward(SignalKind::window_change(), Event::Resized, &tx)?;
    } else {
        for (kind, number) in FORWARDED {
            forward(kind, Event::Signal(number), &tx)?;
        }
    }
    forward(SignalKind::hangup(), Event::HangUp, &tx)?;
    Ok(rx)
}

/// Asks for a secret on the terminal (stderr for the prompt, stdin not echoed); `None`
/// when stdin is no terminal.
pub fn read_secret(prompt: &str) -> std::io::Result<Option<String>> {
    use std::io::{BufRead, Write};
    let stdin = std::io::stdin();
    if !termios::isatty(&stdin) {
        return Ok(None);
    }
    let saved = termios::tcgetattr(&stdin)?;
    let mut quiet = saved.clone();
    quiet.local_modes.remove(termios::LocalModes::ECHO);
    eprint!("{prompt}");
    std::io::stderr().flush()?;
    termios::tcsetattr(&stdin, OptionalActions::Flush, &quiet)?;
    let mut line = String::new();
    let read = stdin.lock().read_line(&mut line);
    let _ = termios::tcsetattr(&stdin, OptionalActions::Flush, &saved);
    eprintln!();
    read?;
    Ok(Some(line.trim_end_matches(['\r', '\n']).to_string()))
}
