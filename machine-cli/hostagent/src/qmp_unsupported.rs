//! QEMU's machine protocol where the host agent has no unix sockets (Windows): QEMU's
//! events are not followed, so a VM paused for lack of host space is not reported as
//! such (compiled, untested).

use std::path::Path;

use tokio::sync::mpsc;

/// An event QEMU sent (none arrive here: the variants are the unix module's, matched by
/// the same code, never made).
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(dead_code)]
pub(crate) enum QmpEvent {
    BlockIoError {
        device: String,
        operation: String,
        action: String,
        nospace: bool,
        reason: String,
    },
    Stop,
    Resume,
    Closed,
}

/// No session is ever made.
pub(crate) struct Qmp;

impl Qmp {
    pub(crate) async fn connect(
        socket: &Path,
    ) -> anyhow::Result<(Qmp, mpsc::UnboundedReceiver<QmpEvent>)> {
        anyhow::bail!(
            "QEMU's QMP socket {} is a unix socket, which this host agent cannot use here",
            socket.display()
        )
    }

    pub(crate) async fn execute(&self, command: &str) -> anyhow::Result<serde_json::Value> {
        anyhow::bail!("no QMP session for {command}")
    }

    pub(crate) async fn status(&self) -> anyhow::Result<String> {
        anyhow::bail!("no QMP session")
    }
}
