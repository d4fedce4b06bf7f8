//! Waiting for the request to stop a long-running process (a host agent): SIGTERM or
//! SIGINT on unix; Ctrl-C, Ctrl-Break or the console closing on Windows.

#[cfg(unix)]
#[path = "signal_unix.rs"]
mod os;
#[cfg(windows)]
#[path = "signal_windows.rs"]
mod os;

pub use os::stop_requested;
