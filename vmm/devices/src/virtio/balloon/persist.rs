//! The balloon's part of a snapshot: the size the host asked for and the size the driver
//! reports (the queues and negotiated features are the transport's).

use serde::{Deserialize, Serialize};

use super::device::Balloon;
use crate::virtio::persist::from_value;

/// The balloon's own state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalloonState {
    /// `num_pages`.
    pub target_pages: u32,
    /// `actual`.
    pub actual_pages: u32,
}

impl Balloon {
    pub(super) fn state(&self) -> serde_json::Value {
        serde_json::to_value(BalloonState {
            target_pages: self.target_pages(),
            actual_pages: self.actual_pages(),
        })
        .unwrap_or(serde_json::Value::Null)
    }

    pub(super) fn set_state(&mut self, value: &serde_json::Value) -> Result<(), String> {
        let state: BalloonState = from_value("balloon", value)?;
        self.restore_sizes(state.target_pages, state.actual_pages);
        Ok(())
    }
}
