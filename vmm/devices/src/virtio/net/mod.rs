//! virtio-net (virtio 1.2, 5.1): one rx/tx queue pair in front of a host [`NetBackend`].
//!
//! Backends carry plain Ethernet frames: a TAP device ([`TapBackend`], over a descriptor the
//! VMM opened with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`), passt's unix stream or a socketpair
//! ([`StreamBackend`]: each frame is a 4-byte big-endian length and the frame). The device
//! offers `VERSION_1`, `MAC` and `MRG_RXBUF`, no offloads: every header from the guest must be
//! plain (no checksum or GSO request). Frames from the backend wait in a bounded queue until the
//! guest posts receive buffers; while that queue is full the backend is not read.

pub mod backend;
mod device;
mod event_handler;
pub mod metrics;
pub mod packet;

pub use backend::{BackendError, NetBackend, RecvStatus, SendStatus, StreamBackend, TapBackend};
pub use device::{Net, NetConfig};
pub use metrics::NetMetrics;

/// Queue sizes (rx, tx).
pub const QUEUE_SIZES: [u16; 2] = [256, 256];
/// Index of the receive queue (device to driver).
pub const RXQ: usize = 0;
/// Index of the transmit queue (driver to device).
pub const TXQ: usize = 1;
/// Most frames held for the guest while it has no receive buffers.
pub const RX_PENDING_FRAMES: usize = 64;
/// Most bytes held for the guest while it has no receive buffers.
pub const RX_PENDING_BYTES: usize = 512 * 1024;

/// Constants of the virtio-net specification (virtio 1.2, 5.1.3 and 5.1.6).
pub mod defs {
    /// The device has a MAC address in its configuration space.
    pub const VIRTIO_NET_F_MAC: u32 = 5;
    /// The driver can merge receive buffers (5.1.6.3.1).
    pub const VIRTIO_NET_F_MRG_RXBUF: u32 = 15;
    /// Length of `struct virtio_net_hdr_v1` (with `num_buffers`), the header of every buffer
    /// once `VERSION_1` is negotiated (5.1.6).
    pub const HDR_LEN: usize = 12;
    /// Largest chain accepted or produced: header plus a 65550-byte frame (64 KiB IP packet,
    /// Ethernet and VLAN headers), as Firecracker.
    pub const MAX_BUFFER_LEN: usize = 65562;
    /// Largest Ethernet frame, without the virtio header.
    pub const MAX_FRAME_LEN: usize = MAX_BUFFER_LEN - HDR_LEN;
    /// Smallest Ethernet frame: destination, source and EtherType.
    pub const MIN_FRAME_LEN: usize = 14;
    /// `flags`: the driver asks for a checksum (needs `VIRTIO_NET_F_CSUM`).
    pub const HDR_F_NEEDS_CSUM: u8 = 1;
    /// `gso_type`: not a GSO frame.
    pub const HDR_GSO_NONE: u8 = 0;
    /// Configuration space `status`: link up.
    pub const S_LINK_UP: u16 = 1;
}

/// Errors of the net device's setup.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// Creating an eventfd failed.
    #[error("cannot create an eventfd")]
    EventFd(#[source] std::io::Error),
    /// The backend descriptor could not be made non-blocking.
    #[error("cannot set up the backend")]
    Backend(#[source] std::io::Error),
}
