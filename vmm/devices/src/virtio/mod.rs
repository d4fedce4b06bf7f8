//! Virtio devices (virtio 1.2) and what they share: the [`VirtioDevice`] trait the transport
//! drives, the interrupt/status block shared with the transport, and descriptor-chain checks.

pub mod balloon;
pub mod block;
pub mod chain;
pub mod fs;
pub mod net;
pub mod persist;
pub mod rng;
pub mod vsock;

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

use crate::interrupt::InterruptLine;
use crate::GuestMemory;

/// Constants of the virtio specification shared by all devices.
pub mod defs {
    /// Device status bits (virtio 1.2, 2.1).
    pub mod status {
        /// The guest noticed the device.
        pub const ACKNOWLEDGE: u32 = 1;
        /// The guest knows how to drive the device.
        pub const DRIVER: u32 = 2;
        /// The driver is set up and ready.
        pub const DRIVER_OK: u32 = 4;
        /// Feature negotiation is complete.
        pub const FEATURES_OK: u32 = 8;
        /// The device hit an error it cannot recover from without a reset.
        pub const DEVICE_NEEDS_RESET: u32 = 0x40;
        /// The driver gave up on the device.
        pub const FAILED: u32 = 0x80;
    }

    /// Device-independent feature bits (virtio 1.2, 6).
    pub mod features {
        /// The device is compliant with virtio 1.0 or later.
        pub const VIRTIO_F_VERSION_1: u32 = 32;
        /// Indirect descriptors (2.7.5.3).
        pub const VIRTIO_RING_F_INDIRECT_DESC: u32 = 28;
    }

    /// Device ids (virtio 1.2, 5).
    pub mod device_type {
        /// Network card.
        pub const NET: u32 = 1;
        /// Block device.
        pub const BLOCK: u32 = 2;
        /// Entropy source.
        pub const RNG: u32 = 4;
        /// Memory balloon.
        pub const BALLOON: u32 = 5;
        /// Socket device.
        pub const VSOCK: u32 = 19;
        /// File system device.
        pub const FS: u32 = 26;
    }

    /// Bits of the MMIO InterruptStatus register (4.2.2).
    pub mod interrupt {
        /// A used buffer was added to a queue.
        pub const VRING: u32 = 1;
        /// The configuration (or status) changed.
        pub const CONFIG: u32 = 2;
    }
}

/// Errors of device activation.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// The driver set up fewer or more queues than the device has.
    #[error("expected {expected} queues, got {got}")]
    QueueCount {
        /// Queues of the device.
        expected: usize,
        /// Queues set up by the driver.
        got: usize,
    },
    /// The device's backend could not start.
    #[error("the device backend failed to start: {0}")]
    Backend(#[source] std::io::Error),
}

/// Interrupt status and the needs-reset flag, shared by a transport and its device.
pub struct VirtioInterrupt {
    status: AtomicU32,
    needs_reset: AtomicBool,
    line: Arc<dyn InterruptLine>,
}

impl VirtioInterrupt {
    /// A block with nothing pending, raising `line`.
    pub fn new(line: Arc<dyn InterruptLine>) -> Self {
        VirtioInterrupt {
            status: AtomicU32::new(0),
            needs_reset: AtomicBool::new(false),
            line,
        }
    }

    fn raise(&self, bit: u32) {
        self.status.fetch_or(bit, Ordering::SeqCst);
        if let Err(e) = self.line.trigger() {
            tracing::error!(error = %e, "cannot raise a virtio interrupt");
        }
    }

    /// Tells the driver that used buffers are available.
    pub fn signal_used_queue(&self) {
        self.raise(defs::interrupt::VRING);
    }

    /// Tells the driver that the configuration space changed.
    pub fn signal_config_change(&self) {
        self.raise(defs::interrupt::CONFIG);
    }

    /// Marks the device DEVICE_NEEDS_RESET (virtio 1.2, 2.1.2) and tells the driver.
    pub fn set_needs_reset(&self) {
        self.needs_reset.store(true, Ordering::SeqCst);
        self.signal_config_change();
    }

    /// Whether the device needs a reset.
    pub fn needs_reset(&self) -> bool {
        self.needs_reset.load(Ordering::SeqCst)
    }

    /// The InterruptStatus register.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// InterruptACK: clears the acknowledged bits.
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// Sets the InterruptStatus register and the needs-reset flag (a restore), without
    /// raising the line: the guest's interrupt controller state is restored separately.
    pub fn restore(&self, status: u32, needs_reset: bool) {
        self.status.store(status, Ordering::SeqCst);
        self.needs_reset.store(needs_reset, Ordering::SeqCst);
    }

    /// Clears everything (device reset).
    pub fn reset(&self) {
        self.status.store(0, Ordering::SeqCst);
        self.needs_reset.store(false, Ordering::SeqCst);
    }
}

/// What an activated device works with.
pub struct ActiveQueues {
    /// Guest memory.
    pub mem: GuestMemory,
    /// The queues, in device order.
    pub queues: Vec<Queue>,
    /// Where to signal the driver.
    pub interrupt: Arc<VirtioInterrupt>,
    /// Features the driver accepted.
    pub acked_features: u64,
}

/// A virtio device, driven by a transport.
pub trait VirtioDevice: Send {
    /// Device id ([`defs::device_type`]).
    fn device_type(&self) -> u32;

    /// Maximum size of each queue; its length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];

    /// How many of the queues (the first ones) the driver sets up once it accepted
    /// `acked_features`: some queues exist only with a feature (the balloon's reporting queue).
    /// Default: all of them.
    fn active_queue_count(&self, _acked_features: u64) -> usize {
        self.queue_max_sizes().len()
    }

    /// Features the device offers (including [`defs::features::VIRTIO_F_VERSION_1`]).
    fn avail_features(&self) -> u64;

    /// Reads the device-specific configuration space. Out-of-range bytes read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);

    /// Writes the device-specific configuration space. Read-only by default.
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        crate::warn_guest!(
            device = self.device_type(),
            offset,
            len = data.len(),
            "guest wrote read-only config space"
        );
    }

    /// Starts the device with the queues the driver set up.
    fn activate(&mut self, active: ActiveQueues) -> Result<(), ActivateError>;

    /// Returns the device to its initial, inactive state.
    fn reset(&mut self);

    /// Whether the device is activated.
    fn is_activated(&self) -> bool;

    /// One eventfd per queue, written by the transport when the driver notifies the queue.
    fn queue_events(&self) -> &[EventFd];

    /// For a snapshot (the VM paused, the device idle): `(next_avail, next_used)` of each
    /// active queue, where the device is in the rings. `None` when inactive.
    fn queue_progress(&self) -> Option<Vec<(u16, u16)>>;

    /// Why the device cannot be snapshotted now, if it cannot. Default: it can.
    fn snapshot_blocker(&self) -> Option<String> {
        None
    }

    /// The device's own state for a snapshot (beyond queues and negotiated features, which
    /// the transport keeps). Default: none.
    fn save_state(&self) -> serde_json::Value {
        serde_json::Value::Null
    }

    /// Restores [`save_state`](Self::save_state)'s value; called on a restore after the
    /// transport re-activated the device with its saved queues.
    fn restore_state(&mut self, _state: &serde_json::Value) -> Result<(), String> {
        Ok(())
    }
}

/// A `u64` feature mask from feature bit numbers.
pub const fn feature_bit(bit: u32) -> u64 {
    1u64 << bit
}

/// Copies the bytes `[offset, offset + data.len())` of `config` into `data`, zero-filling what
/// lies outside.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if start >= config.len() {
        return;
    }
    let end = (start + data.len()).min(config.len());
    data[..end - start].copy_from_slice(&config[start..end]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_read_config_bytes_bounds() {
        let config = [1u8, 2, 3, 4];
        let mut out = [0xffu8; 4];
        read_config_bytes(&config, 2, &mut out);
        assert_eq!(out, [3, 4, 0, 0]);
        read_config_bytes(&config, 100, &mut out);
        assert_eq!(out, [0; 4]);
        read_config_bytes(&config, u64::MAX, &mut out);
        assert_eq!(out, [0; 4]);
    }
}
