use russh::keys::agent::client::AgentClient;

use super::Agent;

pub(super) async fn connect() -> Option<Agent> {
    match AgentClient::connect_env().await {
        Ok(agent) => Some(agent.dynamic()),
        Err(e) => {
            tracing::debug!(error = %e, "no ssh-agent");
            None
        }
    }
}
