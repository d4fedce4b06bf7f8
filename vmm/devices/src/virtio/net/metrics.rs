//! Counters of the net device.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of the net device.
#[derive(Debug, Default, serde::Serialize)]
pub struct NetMetrics {
    /// Frames given to the guest.
    pub rx_frames: AtomicU64,
    /// Frame bytes given to the guest (without virtio headers).
    pub rx_bytes: AtomicU64,
    /// Frames sent by the guest to the backend.
    pub tx_frames: AtomicU64,
    /// Frame bytes sent by the guest to the backend.
    pub tx_bytes: AtomicU64,
    /// Guest frames above [`MAX_BUFFER_LEN`](super::defs::MAX_BUFFER_LEN) with their header.
    pub tx_dropped_oversized: AtomicU64,
    /// Guest frames shorter than an Ethernet header.
    pub tx_dropped_runt: AtomicU64,
    /// Guest headers asking for an offload that was not negotiated.
    pub tx_bad_headers: AtomicU64,
    /// Guest frames dropped because the backend is gone or refused them.
    pub tx_dropped_backend: AtomicU64,
    /// Transmit chains that break the rules (writable buffers, outside memory, no header...).
    pub tx_bad_descriptors: AtomicU64,
    /// Receive chains that break the rules (readable buffers, shorter than a header...).
    pub rx_bad_descriptors: AtomicU64,
    /// Backend frames larger than the guest's buffers can ever hold, or than the maximum.
    pub rx_dropped_oversized: AtomicU64,
    /// Backend frames shorter than an Ethernet header.
    pub rx_dropped_runt: AtomicU64,
    /// Backend frames dropped because the driver was not running.
    pub rx_dropped_inactive: AtomicU64,
    /// Times the backend stopped accepting frames until it drained (backpressure).
    pub tx_backend_full: AtomicU64,
    /// Times rx stopped reading the backend because the guest posted no buffers.
    pub rx_pending_full: AtomicU64,
    /// Backend failures (read or write errors, peer gone).
    pub backend_errors: AtomicU64,
    /// Times the device was marked DEVICE_NEEDS_RESET.
    pub needs_reset: AtomicU64,
}

impl NetMetrics {
    /// Adds `n` to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Adds one to a counter.
    pub fn inc(counter: &AtomicU64) {
        Self::add(counter, 1);
    }
}
