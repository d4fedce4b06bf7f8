//! virtio-fs (virtio 1.2, 5.11) through vhost-user: the VMM owns the virtio-mmio transport and
//! the configuration space (tag, queue count); a vhost-user backend process (`virtiofsd`)
//! processes the queues itself, in guest memory the VMM shares with it (memfd regions).
//!
//! The guest's queue notifications reach the backend directly: the transport writes the
//! queue's eventfd, which is the backend's kick fd. The backend's call fds are the device's;
//! the event loop turns each call into a used-buffer interrupt (InterruptStatus must be set for
//! the MMIO driver, so KVM's irqfd cannot be used directly).

mod device;
mod event_handler;
mod watchdog;

pub use device::{Fs, FsMetrics};

use std::path::PathBuf;
use std::time::Duration;

/// Longest tag the configuration space holds (virtio 1.2, 5.11.4).
pub const TAG_MAX_LEN: usize = 36;
/// Queue size offered for each queue.
pub const QUEUE_SIZE: u16 = 1024;
/// Request queues besides the high-priority queue.
pub const REQUEST_QUEUES: usize = 1;
/// How long one exchange with the backend (connecting and negotiating, starting or stopping
/// the rings) may take before the VMM gives up on the backend.
pub const BACKEND_TIMEOUT: Duration = Duration::from_secs(30);

/// How to create a virtio-fs device.
#[derive(Debug, Clone)]
pub struct FsConfig {
    /// The mount tag the guest uses (`mount -t virtiofs TAG DIR`), 1..=36 bytes.
    pub tag: String,
    /// The vhost-user backend's listening socket.
    pub socket_path: PathBuf,
    /// Longest wait for the backend in one exchange ([`BACKEND_TIMEOUT`] unless a test says).
    pub timeout: Duration,
}

/// Errors of the fs device's setup.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// The tag is empty or longer than [`TAG_MAX_LEN`].
    #[error("tag {0:?} must be 1 to 36 bytes")]
    Tag(String),
    /// Guest memory is private: the backend could not map it.
    #[error("guest memory is not shared (memfd-backed), which a vhost-user backend needs")]
    MemoryNotShared,
    /// Connecting to or negotiating with the backend failed.
    #[error("vhost-user backend at {path}: {step}: {source}")]
    Backend {
        /// The backend's socket.
        path: PathBuf,
        /// What the VMM was doing.
        step: &'static str,
        /// The vhost-user error.
        #[source]
        source: vhost::Error,
    },
    /// The backend did not answer in time (it hangs): the VMM shut the connection down.
    #[error("vhost-user backend at {path}: {step}: no answer within {} s", .timeout.as_secs_f64())]
    Timeout {
        /// The backend's socket.
        path: PathBuf,
        /// What the VMM was doing.
        step: &'static str,
        /// How long the VMM waited.
        timeout: Duration,
    },
    /// Connecting to the backend's socket failed.
    #[error("vhost-user backend at {path}: cannot connect")]
    Connect {
        /// The backend's socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The backend lacks something the device needs.
    #[error("vhost-user backend at {0}: {1}")]
    Unsupported(PathBuf, String),
    /// Creating an eventfd failed.
    #[error("cannot create an eventfd")]
    EventFd(#[source] std::io::Error),
}
