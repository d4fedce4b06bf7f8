//! Drivers: how a machine is created, started, stopped and removed (STYLE.md, "Machine
//! drivers"). Callers check [`Driver::capabilities`] before an operation; an unsupported
//! one returns [`MachineError::Unsupported`].

mod fake;
mod local;
mod ssh;

use std::time::Duration;

pub use fake::FakeDriver;
pub use local::{check_arch, choose_backend, vmm_binary, Backend, BackendChoice, LocalDriver};
pub use ssh::SshDriver;

use crate::config::DriverKind;
use crate::state::State;
use crate::store::{Machine, StoreError};

/// What a driver can do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct DriverCaps {
    pub can_start_stop: bool,
    /// The VM runs on this host (logs, console, shell through the agent).
    pub local_vm: bool,
    /// The engine runs on another host (ssh): start and stop act on the local end (the
    /// tunnel, `docker.sock` and ports), never on the engine.
    pub remote: bool,
}

/// How to reach a machine.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Endpoints {
    /// For `DOCKER_HOST`: `unix:///…/docker.sock`, or `tcp://host:2376`.
    pub docker_host: String,
    /// SSH target of a remote machine (`user@host:port`).
    pub ssh: Option<String>,
    /// The engine's own mutual TLS listener (ssh machines with `--engine-tls`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub engine_tls: Option<TlsEndpoint>,
}

/// The engine's mutual TLS listener, docker-machine style.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TlsEndpoint {
    /// `tcp://host:2376`.
    pub docker_host: String,
    /// `DOCKER_CERT_PATH`: `ca.pem`, `cert.pem`, `key.pem`.
    pub cert_path: std::path::PathBuf,
}

/// Why a driver operation failed.
#[derive(Debug, thiserror::Error)]
pub enum MachineError {
    #[error("the {driver} driver cannot {op}")]
    Unsupported {
        driver: &'static str,
        op: &'static str,
    },
    #[error("the {driver} driver cannot run {arch} guests: {reason}")]
    UnsupportedArch {
        driver: &'static str,
        arch: crate::platform::Arch,
        reason: String,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot start the host agent {exe}")]
    SpawnHostAgent {
        exe: String,
        #[source]
        source: std::io::Error,
    },
    #[error("machine {name} failed to start: {reason}")]
    StartFailed { name: String, reason: String },
    #[error("machine {name} did not {what} within {timeout:?}")]
    Timeout {
        name: String,
        what: &'static str,
        timeout: Duration,
    },
    #[error("machine {name} is not running")]
    NotRunning { name: String },
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("host agent of {name}: {message}")]
    HostAgent { name: String, message: String },
    #[error("ssh machine {name}")]
    Remote {
        name: String,
        #[source]
        source: Box<crate::ssh::SshError>,
    },
}

/// The lifecycle of one kind of machine.
pub trait Driver: Send + Sync {
    fn kind(&self) -> DriverKind;
    fn capabilities(&self) -> DriverCaps;
    /// Prepares what a start needs (idempotent): the data disk.
    fn create(&self, machine: &Machine) -> Result<(), MachineError>;
    /// Starts the machine and waits until its engine answers; `progress` hears each
    /// change of what it is doing.
    fn start(&self, machine: &Machine, progress: &mut dyn FnMut(&str)) -> Result<(), MachineError>;
    /// Stops the machine cleanly: with `save`, saved where its backend can (the next
    /// start resumes it; `state.json`'s `last_stop` says whether it was and why not),
    /// else shut down (the engine shuts down, data is synced).
    fn stop(&self, machine: &Machine, save: bool) -> Result<(), MachineError>;
    /// Stops the machine at once.
    fn kill(&self, machine: &Machine) -> Result<(), MachineError>;
    /// Removes what the driver made outside the machine folder.
    fn remove(&self, machine: &Machine) -> Result<(), MachineError>;
    fn state(&self, machine: &Machine) -> State;
    fn endpoints(&self, machine: &Machine) -> Result<Endpoints, MachineError>;
}

/// The driver for a machine's configured kind.
pub fn for_machine(machine: &Machine) -> Box<dyn Driver> {
    match machine.spec.driver {
        DriverKind::Fake => Box::new(FakeDriver),
        DriverKind::Ssh => Box::new(SshDriver::new(None)),
        kind => Box::new(LocalDriver::new(kind)),
    }
}
