//! Host code that differs per OS, one small module per concern (std's own `sys` layout):
//! the per-OS file is chosen on the `mod` line and exposes the same functions, so no
//! caller sees a `cfg`. Linux is built and tested; Windows is built and its unit tests
//! run under wine; macOS is type-checked (compiled, untested).
//!
//! - [`process`]: a process named by more than its PID (its start time), liveness,
//!   stopping, detaching a child from the caller's terminal and signals.
//! - [`local_socket`]: the local endpoints the docker CLI and rmachine talk to (a unix
//!   socket, or a named pipe on Windows), their listener and client.
//! - [`fs`]: files only their owner may read (state with the boot's token), executables.
//! - [`host`]: the host's memory.
//! - [`install_dir`]: the read-only files an installed rmachine came with.
//! - [`signal`]: the request to stop a long-running process.
//! - [`ssh_agent`]: the user's ssh-agent (a unix socket, or a named pipe on Windows).

pub mod fs;
pub mod host;
pub mod install_dir;
pub mod local_socket;
pub mod process;
pub mod signal;
pub mod ssh_agent;
