//! The virtio-mmio transport's part of a snapshot: the registers the driver wrote (status,
//! negotiated features, selectors, queue setup), the interrupt status, and the device's own
//! part with the positions of its queues.

use serde::{Deserialize, Serialize};

use crate::virtio::persist::QueueSnapshot;

/// One transport and its device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransportSnapshot {
    /// The virtio device id, checked on restore.
    pub device_type: u32,
    /// The device status register.
    pub status: u32,
    /// DeviceFeaturesSel.
    pub features_select: u32,
    /// DriverFeaturesSel.
    pub acked_features_select: u32,
    /// The features the driver accepted.
    pub acked_features: u64,
    /// QueueSel.
    pub queue_select: u32,
    /// ConfigGeneration.
    pub config_generation: u32,
    /// InterruptStatus.
    pub interrupt_status: u32,
    /// DEVICE_NEEDS_RESET is set.
    pub needs_reset: bool,
    /// Queues with a misaligned ring address written (they cannot become ready).
    pub bad_queue_address: Vec<bool>,
    /// Every queue, with the device's positions when it is active.
    pub queues: Vec<QueueSnapshot>,
    /// The device was activated (DRIVER_OK and a successful activation).
    pub activated: bool,
    /// The device's own state.
    pub device: serde_json::Value,
}
