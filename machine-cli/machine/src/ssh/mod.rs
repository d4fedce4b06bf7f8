//! Existing Linux hosts over SSH (the `ssh` driver, DESIGN.md "Machine drivers"):
//! the SSH client ([`session`]: russh, one connection with keepalives; channels to the
//! remote engine's socket and TCP ports), host key pinning ([`host_key`]), the probe of
//! a host ([`probe`]), the plan that installs Debian's `docker.io` through the host's own
//! apt ([`install`]), the engine's optional mutual TLS ([`tls`]) and the machine bundle
//! of `rmachine export|import` ([`bundle`]).
//!
//! russh 0.52 is used because it is the last release whose cryptography is pure Rust
//! (RustCrypto): later ones need `ring` or `aws-lc-rs`, C build scripts that need Apple's
//! SDK, which would break the macOS type-check (README, Platforms).

pub mod bundle;
pub mod host_key;
pub mod install;
pub mod probe;
pub mod remote;
pub mod session;
mod settings;
pub mod tls;

use std::path::PathBuf;

pub use host_key::HostKeyCheck;
pub use session::{Auth, Connected, ExecOutput, Session};
pub use settings::{
    set_host, validate_settings, InstallMode, SshSettings, SshTarget, DEFAULT_PORT,
};

/// The remote engine's socket, which every Engine API connection is a channel to.
pub const REMOTE_DOCKER_SOCKET: &str = "/var/run/docker.sock";

/// The port of the engine's mutual TLS listener (`--engine-tls`).
pub const ENGINE_TLS_PORT: u16 = 2376;

/// A passphrase: shown as `(hidden)` by `Debug`, never serialized.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("(hidden)")
    }
}

/// Why talking to a remote host failed; each variant names the step and what to do.
#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error("cannot reach {address} (is the host up, sshd running and the port right?)")]
    Unreachable {
        address: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no answer from {address} within {seconds} s (is the host up and the port right?)")]
    ConnectTimeout { address: String, seconds: u64 },
    #[error("the ssh handshake with {address} failed")]
    Handshake {
        address: String,
        #[source]
        source: russh::Error,
    },
    #[error(
        "the host key of {host} changed: pinned {pinned} (in {pin_file}), offered {offered}. \
         Not connecting: this may be an attack. If the host was reinstalled and you checked its \
         new key (`ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub` on it), delete {pin_file}: \
         the next `rmachine start` pins the key it is offered"
    )]
    HostKeyChanged {
        host: String,
        pinned: String,
        offered: String,
        pin_file: PathBuf,
    },
    #[error("the host key of {host} is {offered}, not {expected} as --ssh-host-key says; not connecting")]
    HostKeyMismatch {
        host: String,
        expected: String,
        offered: String,
    },
    #[error(
        "{target} refused every key tried ({tried}): check the user, pass the right key with \
         --ssh-key, or add it to your ssh-agent"
    )]
    AuthFailed { target: String, tried: String },
    #[error(
        "no ssh key to log in to {target} with: the ssh-agent has none and none of \
         ~/.ssh/id_ed25519, id_ecdsa, id_rsa exists; pass one with --ssh-key"
    )]
    NoKeys { target: String },
    #[error("the key {key} is encrypted: its passphrase is needed (asked on a terminal), or load it into your ssh-agent")]
    NeedsPassphrase { key: PathBuf },
    #[error("wrong passphrase for the key {key}")]
    BadPassphrase { key: PathBuf },
    #[error("cannot read the ssh key {path}: {message}")]
    KeyFile { path: PathBuf, message: String },
    #[error("the host key pin {path} is unusable: {message}")]
    PinFile { path: PathBuf, message: String },
    #[error("cannot open {what} over ssh")]
    Channel {
        what: String,
        #[source]
        source: russh::Error,
    },
    #[error("{what} through ssh was refused by the host: {reason}")]
    ForwardRefused { what: String, reason: String },
    #[error("running `{command}` over ssh failed")]
    Exec {
        command: String,
        #[source]
        source: russh::Error,
    },
    #[error("{step} did not finish within {seconds} s")]
    StepTimeout { step: String, seconds: u64 },
    #[error("{step}: {message}")]
    Step { step: String, message: String },
}

impl SshError {
    /// A failed step with what to do about it.
    pub fn step(step: impl Into<String>, message: impl Into<String>) -> SshError {
        SshError::Step {
            step: step.into(),
            message: message.into(),
        }
    }
}
