//! virtio-vsock (virtio 1.2, 5.10) with the Firecracker-compatible hybrid unix-socket host side.
//!
//! Host-initiated: a host process connects to `uds_path`, writes `CONNECT <port>\n`, the VMM
//! asks the guest, and answers `OK <host_port>\n` once the guest accepts; the stream is then the
//! connection. Guest-initiated: a guest connection to CID 2 port P is forwarded to the unix
//! socket `<uds_path>_P`.

pub mod csm;
mod device;
mod event_handler;
pub mod metrics;
pub mod packet;
pub mod persist;
pub mod unix;

pub use device::{Vsock, VsockConfig};
pub use metrics::VsockMetrics;

/// Queue sizes (rx, tx, event).
pub const QUEUE_SIZES: [u16; 3] = [256, 256, 256];
/// Index of the rx queue (device to driver).
pub const RXQ: usize = 0;
/// Index of the tx queue (driver to device).
pub const TXQ: usize = 1;
/// Index of the event queue.
pub const EVQ: usize = 2;

/// Constants of the virtio-vsock specification (virtio 1.2, 5.10.6).
pub mod defs {
    /// CID of the host.
    pub const VSOCK_HOST_CID: u64 = 2;
    /// Length of `struct virtio_vsock_hdr`.
    pub const HEADER_LEN: usize = 44;
    /// Stream sockets.
    pub const TYPE_STREAM: u16 = 1;

    /// Connection request.
    pub const OP_REQUEST: u16 = 1;
    /// Connection accepted.
    pub const OP_RESPONSE: u16 = 2;
    /// Connection reset.
    pub const OP_RST: u16 = 3;
    /// Half or full close.
    pub const OP_SHUTDOWN: u16 = 4;
    /// Data.
    pub const OP_RW: u16 = 5;
    /// Here is my credit.
    pub const OP_CREDIT_UPDATE: u16 = 6;
    /// Tell me your credit.
    pub const OP_CREDIT_REQUEST: u16 = 7;

    /// Shutdown: the sender will receive no more.
    pub const SHUTDOWN_RCV: u32 = 1;
    /// Shutdown: the sender will send no more.
    pub const SHUTDOWN_SEND: u32 = 2;

    /// Event id of `struct virtio_vsock_event`: the transport was reset (5.10.6.8).
    pub const EVENT_TRANSPORT_RESET: u32 = 0;
    /// Length of `struct virtio_vsock_event`.
    pub const EVENT_LEN: u64 = 4;

    /// Largest payload the device accepts in one packet.
    pub const MAX_PKT_PAYLOAD: u32 = 64 * 1024;
    /// Buffer space the device offers each connection (guest-to-host bytes in flight).
    pub const CONN_BUF_ALLOC: u32 = 256 * 1024;
}

/// Errors of the vsock device's setup.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    /// The host unix socket could not be bound.
    #[error("cannot listen on {0}")]
    Bind(String, #[source] std::io::Error),
    /// Creating an eventfd failed.
    #[error("cannot create an eventfd")]
    EventFd(#[source] std::io::Error),
}
