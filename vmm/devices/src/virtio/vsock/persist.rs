//! The vsock device's part of a snapshot. Connections are not carried over: the host ends of
//! them belong to the process that took the snapshot. As the virtio specification has it
//! (5.10.6.8), a restored device sends VIRTIO_VSOCK_EVENT_TRANSPORT_RESET on the event queue,
//! and the driver drops its connections (their sockets fail with ECONNRESET) and keeps its
//! listeners, which accept new connections at once.

use serde::{Deserialize, Serialize};

use super::device::Vsock;
use crate::virtio::persist::from_value;

/// The vsock device's own state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockState {
    /// The guest's CID when the snapshot was taken (the configuration may not change it).
    pub guest_cid: u64,
}

impl Vsock {
    pub(super) fn state(&self) -> serde_json::Value {
        serde_json::to_value(VsockState {
            guest_cid: self.guest_cid(),
        })
        .unwrap_or(serde_json::Value::Null)
    }

    pub(super) fn set_state(&mut self, value: &serde_json::Value) -> Result<(), String> {
        let state: VsockState = from_value("vsock", value)?;
        if state.guest_cid != self.guest_cid() {
            return Err(format!(
                "vsock: the snapshot's guest cid is {}, the configuration's {}",
                state.guest_cid,
                self.guest_cid()
            ));
        }
        self.request_transport_reset();
        Ok(())
    }
}
