//! Virtio transports. Only virtio-mmio (virtio 1.2, 4.2), version 2 (no legacy interface).

pub mod mmio;
pub mod persist;

pub use mmio::{MmioTransport, TransportMetrics, MMIO_SIZE};
pub use persist::TransportSnapshot;
