//! The user's ssh-agent: `SSH_AUTH_SOCK` (a unix socket) on unix; on Windows the OpenSSH
//! agent's named pipe (`SSH_AUTH_SOCK` when set, else `\\.\pipe\openssh-ssh-agent`).

use russh::keys::agent::client::{AgentClient, AgentStream};

#[cfg(unix)]
#[path = "ssh_agent_unix.rs"]
mod os;
#[cfg(windows)]
#[path = "ssh_agent_windows.rs"]
mod os;

/// A connected agent, whatever carries it.
pub type Agent = AgentClient<Box<dyn AgentStream + Send + Unpin + 'static>>;

/// The user's agent, when one runs.
pub async fn connect() -> Option<Agent> {
    os::connect().await
}
