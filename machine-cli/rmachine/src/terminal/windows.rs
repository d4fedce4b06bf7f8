use std::time::Duration;

use tokio::signal::windows::{ctrl_c, ctrl_close};
use tokio::sync::mpsc;

use super::Event;

/// How often the console's size is looked at (Windows has no SIGWINCH).
const RESIZE_POLL: Duration = Duration::from_millis(250);

/// The console's rows and columns.
pub fn size() -> Option<(u16, u16)> {
    let (cols, rows) = crossterm::terminal::size().ok()?;
    (rows > 0 && cols > 0).then_some((rows, cols))
}

/// The console in raw mode until this is dropped.
pub struct RawMode;

impl RawMode {
    pub fn enter() -> std::io::Result<RawMode> {
        crossterm::terminal::enable_raw_mode()?;
        Ok(RawMode)
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = crossterm::terminal::disable_raw_mode();
    }
}

/// The session's events: size changes (polled), Ctrl-C to forward as SIGINT without a
/// terminal, and the console closing. Needs a tokio runtime.
pub fn watch(tty: bool) -> std::io::Result<mpsc::Receiver<Event>> {
    let (tx, rx) = mpsc::channel(8);
    if tty {
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut last = size();
            loop {
                tokio::time::sleep(RESIZE_POLL).await;
                let now = size();
                if now != last {
                    last = now;
                    if tx.send(Event::Resized).await.is_err() {
                        return;
                    }
                }
            }
        });
    } else {
        let mut c = ctrl_c()?;
        let tx = tx.clone();
        tokio::spawn(async move {
            while c.recv().await.is_some() {
                if tx.send(Event::Signal(2)).await.is_err() {
                    return;
                }
            }
        });
    }
    let mut close = ctrl_close()?;
    tokio::spawn(async move {
        if close.recv().await.is_some() {
            let _ = tx.send(Event::HangUp).await;
        }
    });
    Ok(rx)
}

/// Asks for a secret on the console, not echoed (raw mode, keys read one by one);
/// `None` when there is no console.
pub fn read_secret(prompt: &str) -> std::io::Result<Option<String>> {
    use crossterm::event::{read, Event as Input, KeyCode, KeyEventKind};
    use std::io::{IsTerminal, Write};
    if !std::io::stdin().is_terminal() {
        return Ok(None);
    }
    eprint!("{prompt}");
    std::io::stderr().flush()?;
    let _raw = RawMode::enter()?;
    let mut secret = String::new();
    loop {
        if let Input::Key(key) = read()? {
            if key.kind != KeyEventKind::Press {
                continue;
            }
            match key.code {
                KeyCode::Enter => break,
                KeyCode::Backspace => {
                    secret.pop();
                }
                KeyCode::Char(c) => secret.push(c),
                KeyCode::Esc => return Ok(None),
                _ => {}
            }
        }
    }
    eprintln!();
    Ok(Some(secret))
}
