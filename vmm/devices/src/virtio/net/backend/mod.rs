//! Host ends of the net device. A backend moves whole Ethernet frames (no virtio header) over
//! one non-blocking descriptor the device polls.

mod stream;
mod tap;

use std::os::fd::RawFd;

pub use stream::StreamBackend;
pub use tap::TapBackend;

/// What [`NetBackend::recv`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecvStatus {
    /// A frame is in the buffer.
    Frame,
    /// Nothing to read now.
    Empty,
    /// A frame larger than [`MAX_FRAME_LEN`](super::defs::MAX_FRAME_LEN) was skipped.
    Oversized(u64),
    /// A frame shorter than an Ethernet header was skipped.
    Runt(u64),
}

/// What [`NetBackend::send`] did with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendStatus {
    /// Sent, or queued to go out once the descriptor is writable.
    Sent,
    /// Not taken: the backend's output is full; retry after [`NetBackend::flush`] drained it.
    Full,
    /// Dropped by the host side (e.g. the TAP queue is full).
    Dropped,
}

/// A backend failure; the device stops using the backend.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The peer closed the connection.
    #[error("the backend peer closed the connection")]
    Closed,
    /// Reading or writing failed.
    #[error("backend i/o failed")]
    Io(#[source] std::io::Error),
}

/// The host end of a net device.
pub trait NetBackend: Send {
    /// Short name for logs and metrics (`tap`, `passt`, `socketpair`).
    fn kind(&self) -> &'static str;

    /// The descriptor to poll: readable when frames may be received, writable when queued
    /// output may drain.
    fn raw_fd(&self) -> RawFd;

    /// Receives the next frame into `frame` (replacing its content).
    fn recv(&mut self, frame: &mut Vec<u8>) -> Result<RecvStatus, BackendError>;

    /// Sends one frame.
    fn send(&mut self, frame: &[u8]) -> Result<SendStatus, BackendError>;

    /// Whether output waits for the descriptor to become writable.
    fn has_pending_output(&self) -> bool {
        false
    }

    /// Writes queued output; called when the descriptor is writable.
    fn flush(&mut self) -> Result<(), BackendError> {
        Ok(())
    }
}
