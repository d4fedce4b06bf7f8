//! The local terminal of `rmachine shell`: its size, raw mode, and what the user or the
//! system asks of a running session (a window size change, an interrupt to forward, a
//! hang-up). Per OS: termios and signals on unix, the console on Windows (compiled,
//! untested there).

#[cfg(unix)]
#[path = "unix.rs"]
mod os;
#[cfg(windows)]
#[path = "windows.rs"]
mod os;

pub use os::{read_secret, size, watch, RawMode};

/// Something that happened to the local session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The window changed size: send the new [`size`].
    Resized,
    /// Forward this signal number (2 INT, 3 QUIT, 15 TERM) to the command.
    Signal(u8),
    /// The terminal went away: end the session.
    HangUp,
}
