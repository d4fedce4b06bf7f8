//! virtio-rng (virtio 1.2, 5.4): fills guest buffers from the host's `/dev/urandom`.

mod device;
mod event_handler;

pub use device::{Rng, RngMetrics};

/// Size of the request queue.
pub const QUEUE_SIZE: u16 = 256;
/// Most bytes served per request (larger buffers are filled partly, as the spec allows).
pub const MAX_REQUEST_BYTES: u32 = 64 * 1024;

/// Errors of the rng device's setup.
#[derive(Debug, thiserror::Error)]
pub enum RngError {
    /// `/dev/urandom` could not be opened.
    #[error("cannot open /dev/urandom")]
    Open(#[source] std::io::Error),
    /// Creating an eventfd failed.
    #[error("cannot create an eventfd")]
    EventFd(#[source] std::io::Error),
}
