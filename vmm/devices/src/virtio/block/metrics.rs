//! Counters of one virtio-blk device.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of one virtio-blk device, all monotonic.
#[derive(Debug, Default, serde::Serialize)]
pub struct BlockMetrics {
    /// Activations.
    pub activations: AtomicU64,
    /// Read requests completed.
    pub read_count: AtomicU64,
    /// Bytes read.
    pub read_bytes: AtomicU64,
    /// Write requests completed.
    pub write_count: AtomicU64,
    /// Bytes written.
    pub write_bytes: AtomicU64,
    /// Flush requests.
    pub flush_count: AtomicU64,
    /// Discard requests.
    pub discard_count: AtomicU64,
    /// Write-zeroes requests.
    pub write_zeroes_count: AtomicU64,
    /// GET_ID requests.
    pub get_id_count: AtomicU64,
    /// Requests answered VIRTIO_BLK_S_IOERR.
    pub io_errors: AtomicU64,
    /// Requests answered VIRTIO_BLK_S_UNSUPP.
    pub unsupported: AtomicU64,
    /// Malformed descriptor chains (bad address, direction, length, loop).
    pub malformed_chains: AtomicU64,
    /// Times the device was marked DEVICE_NEEDS_RESET.
    pub needs_reset: AtomicU64,
    /// Queue notifications.
    pub queue_events: AtomicU64,
}

impl BlockMetrics {
    /// Adds one to a counter.
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds `n` to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}
