//! What a Tauri command returns on failure: `{ kind, message }` (STYLE.md, "Errors").
//! The UI switches on `kind`; `message` is the whole error chain for people.

use rmachine_machine::driver::MachineError;
use rmachine_machine::lifecycle::{error_chain, LifecycleError};
use rmachine_machine::store::StoreError;
use serde::Serialize;

/// The kinds of failure the UI tells apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// No such machine, container, image, volume or network.
    NotFound,
    /// A machine or object of that name exists.
    Exists,
    /// A value the user gave is not acceptable (name, CPUs, memory, disk).
    Invalid,
    /// The machine must be stopped first (or the object is in use).
    Busy,
    /// The machine's engine cannot be reached because the machine is not running.
    NotRunning,
    /// The driver cannot do that.
    Unsupported,
    /// The engine refused or failed the request.
    Engine,
    /// A machine did not start or stop.
    Machine,
    /// An ssh machine's host refused or could not be reached (the message names the step:
    /// unreachable, host key changed, no sudo, wrong key, engine not running).
    Remote,
    /// Reading or writing a file failed.
    Io,
    /// Anything else.
    Internal,
}

/// A failed command, as the UI receives it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{message}")]
pub struct CommandError {
    pub kind: ErrorKind,
    pub message: String,
}

impl CommandError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> CommandError {
        CommandError {
            kind,
            message: message.into(),
        }
    }

    pub fn not_running(machine: &str) -> CommandError {
        CommandError::new(
            ErrorKind::NotRunning,
            format!(
                "machine {machine} is not running: start it on the Machines page (or `rmachine start {machine}`)"
            ),
        )
    }
}

fn store_kind(e: &StoreError) -> ErrorKind {
    match e {
        StoreError::InvalidName(_) => ErrorKind::Invalid,
        StoreError::NotFound(_) => ErrorKind::NotFound,
        StoreError::Exists(_) => ErrorKind::Exists,
        StoreError::Busy { .. } => ErrorKind::Busy,
        StoreError::NotRunning { .. } => ErrorKind::NotRunning,
        StoreError::Config(rmachine_machine::config::ConfigError::Invalid { .. }) => {
            ErrorKind::Invalid
        }
        StoreError::Config(_) | StoreError::Io { .. } => ErrorKind::Io,
    }
}

fn machine_kind(e: &MachineError) -> ErrorKind {
    match e {
        MachineError::Unsupported { .. } | MachineError::UnsupportedArch { .. } => {
            ErrorKind::Unsupported
        }
        MachineError::Store(s) => store_kind(s),
        MachineError::NotRunning { .. } => ErrorKind::NotRunning,
        MachineError::Io { .. } => ErrorKind::Io,
        MachineError::SpawnHostAgent { .. }
        | MachineError::StartFailed { .. }
        | MachineError::Timeout { .. }
        | MachineError::HostAgent { .. } => ErrorKind::Machine,
        MachineError::Remote { .. } => ErrorKind::Remote,
    }
}

impl From<LifecycleError> for CommandError {
    fn from(e: LifecycleError) -> CommandError {
        let kind = match &e {
            LifecycleError::Store(s) => store_kind(s),
            LifecycleError::Machine(m) | LifecycleError::Prepare { source: m, .. } => {
                machine_kind(m)
            }
            LifecycleError::Config(rmachine_machine::config::ConfigError::Invalid { .. })
            | LifecycleError::SettingsOfExisting { .. }
            | LifecycleError::ShrinkDisk { .. }
            | LifecycleError::Bundle(_) => ErrorKind::Invalid,
            LifecycleError::Network(rmachine_machine::network::NetworkError::NotFound(_)) => {
                ErrorKind::NotFound
            }
            LifecycleError::Network(rmachine_machine::network::NetworkError::InUse { .. }) => {
                ErrorKind::Busy
            }
            LifecycleError::Network(_) => ErrorKind::Invalid,
            // The image source (a registry) refused or could not be reached.
            LifecycleError::Pull { .. } => ErrorKind::Remote,
            LifecycleError::Config(_) | LifecycleError::Context(_) | LifecycleError::Paths(_) => {
                ErrorKind::Io
            }
        };
        CommandError::new(kind, error_chain(&e))
    }
}

impl From<StoreError> for CommandError {
    fn from(e: StoreError) -> CommandError {
        CommandError::new(store_kind(&e), error_chain(&e))
    }
}

impl From<bollard::errors::Error> for CommandError {
    fn from(e: bollard::errors::Error) -> CommandError {
        use bollard::errors::Error as B;
        let kind = match &e {
            B::DockerResponseServerError {
                status_code: 404, ..
            } => ErrorKind::NotFound,
            B::DockerResponseServerError {
                status_code: 409, ..
            } => ErrorKind::Busy,
            B::DockerResponseServerError {
                status_code: 400, ..
            } => ErrorKind::Invalid,
            _ => ErrorKind::Engine,
        };
        let message = match &e {
            B::DockerResponseServerError { message, .. } => message.clone(),
            other => error_chain(other),
        };
        CommandError::new(kind, message)
    }
}

/// What commands return.
pub type CommandResult<T> = Result<T, CommandError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_error_serializes_as_kind_and_message() {
        let e = CommandError::from(LifecycleError::Store(StoreError::NotFound("dev".into())));
        let json = serde_json::to_value(&e).unwrap();
        assert_eq!(json["kind"], "not_found");
        assert!(json["message"].as_str().unwrap().contains("dev"));
    }

    #[test]
    fn test_engine_status_codes_map_to_kinds() {
        let e = bollard::errors::Error::DockerResponseServerError {
            status_code: 409,
            message: "in use".into(),
        };
        assert_eq!(CommandError::from(e).kind, ErrorKind::Busy);
    }
}
