//! Counters of the balloon device.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of the balloon device.
#[derive(Debug, Default, serde::Serialize)]
pub struct BalloonMetrics {
    /// Pages the guest put in the balloon.
    pub inflated_pages: AtomicU64,
    /// Pages the guest took back.
    pub deflated_pages: AtomicU64,
    /// Free page reports (chains on the reporting queue).
    pub reports: AtomicU64,
    /// Ranges the guest reported free.
    pub reported_ranges: AtomicU64,
    /// Bytes the guest reported free.
    pub reported_bytes: AtomicU64,
    /// Calls of madvise (or the platform's equivalent) on guest memory.
    pub discards: AtomicU64,
    /// Bytes given back to the host (inflated and reported).
    pub discarded_bytes: AtomicU64,
    /// Discards that failed.
    pub discard_errors: AtomicU64,
    /// Ranges outside guest memory.
    pub bad_ranges: AtomicU64,
    /// Chains that break the rules (wrong direction, odd length, too long...).
    pub malformed_chains: AtomicU64,
    /// Driver writes of read-only configuration fields.
    pub bad_config_writes: AtomicU64,
    /// Times the device was marked DEVICE_NEEDS_RESET.
    pub needs_reset: AtomicU64,
}

impl BalloonMetrics {
    /// Adds `n` to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Adds one to a counter.
    pub fn inc(counter: &AtomicU64) {
        Self::add(counter, 1);
    }
}
