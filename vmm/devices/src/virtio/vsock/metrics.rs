//! Counters of the vsock device.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of the vsock device.
#[derive(Debug, Default, serde::Serialize)]
pub struct VsockMetrics {
    /// Packets from the guest.
    pub tx_packets: AtomicU64,
    /// Payload bytes from the guest.
    pub tx_bytes: AtomicU64,
    /// Packets to the guest.
    pub rx_packets: AtomicU64,
    /// Payload bytes to the guest.
    pub rx_bytes: AtomicU64,
    /// Connections opened (both directions).
    pub conns_opened: AtomicU64,
    /// Connections closed.
    pub conns_closed: AtomicU64,
    /// Host connections refused (bad CONNECT line).
    pub host_handshake_failures: AtomicU64,
    /// Guest connections to a host port nobody listens on.
    pub host_connect_failures: AtomicU64,
    /// Resets sent to the guest.
    pub rst_sent: AtomicU64,
    /// Malformed chains or packets from the guest.
    pub malformed_packets: AtomicU64,
    /// Guest data beyond the credit it was given.
    pub credit_violations: AtomicU64,
    /// Times the device was marked DEVICE_NEEDS_RESET.
    pub needs_reset: AtomicU64,
}

impl VsockMetrics {
    /// Adds `n` to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}
