use russh::keys::agent::client::AgentClient;

use super::Agent;

/// The pipe of Windows' own OpenSSH agent service.
const OPENSSH_AGENT_PIPE: &str = r"\\.\pipe\openssh-ssh-agent";

pub(super) async fn connect() -> Option<Agent> {
    let pipe = std::env::var("SSH_AUTH_SOCK")
        .ok()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| OPENSSH_AGENT_PIPE.to_string());
    // The connect loops while the pipe is busy: bound it.
    let connect = AgentClient::connect_named_pipe(&pipe);
    match tokio::time::timeout(std::time::Duration::from_secs(2), connect).await {
        Ok(Ok(agent)) => Some(agent.dynamic()),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, pipe, "no ssh-agent");
            None
        }
        Err(_) => {
            tracing::debug!(pipe, "the ssh-agent's pipe stayed busy");
            None
        }
    }
}
