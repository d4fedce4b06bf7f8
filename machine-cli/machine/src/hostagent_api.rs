//! The host agent's control socket (`<machine>/hostagent.sock`): one JSON request per
//! line, one JSON reply per line. The CLI and the desktop app use it to stop a machine,
//! re-sync the guest clock and read live status.

use serde::{Deserialize, Serialize};

use crate::state::MachineState;

/// A request to the host agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum HostAgentRequest {
    /// The machine's live state.
    Status,
    /// Stop the machine and exit: save the VM where the backend can and `save` asks
    /// (the next start resumes it), else shut the guest down cleanly.
    Stop {
        /// Absent: a full shutdown (what a client older than saving meant).
        #[serde(default)]
        save: bool,
    },
    /// Set the guest clock from the host's now.
    SyncTime,
}

/// The host agent's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum HostAgentReply {
    Status { state: Box<MachineState> },
    Stopping,
    TimeSynced { offset_ns: i64 },
    Error { message: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_requests_round_trip_and_reject_unknown() {
        for r in [
            HostAgentRequest::Status,
            HostAgentRequest::Stop { save: true },
            HostAgentRequest::Stop { save: false },
            HostAgentRequest::SyncTime,
        ] {
            let line = serde_json::to_string(&r).unwrap();
            assert_eq!(serde_json::from_str::<HostAgentRequest>(&line).unwrap(), r);
        }
        assert!(serde_json::from_str::<HostAgentRequest>(r#"{"op":"format"}"#).is_err());
        assert_eq!(
            serde_json::from_str::<HostAgentRequest>(r#"{"op":"stop"}"#).unwrap(),
            HostAgentRequest::Stop { save: false },
            "an older client's stop is a full shutdown"
        );
    }
}
