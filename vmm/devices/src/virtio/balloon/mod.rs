//! virtio-balloon (virtio 1.2, 5.5) with free page reporting.
//!
//! The guest gives pages back through the inflate queue (arrays of 4 KiB page frame numbers)
//! and, with `VIRTIO_BALLOON_F_FREE_PAGE_REPORTING`, reports free ranges of its allocator on the
//! reporting queue. Each valid range is handed to a [`DiscardMemory`], which the VMM implements
//! with `madvise(MADV_DONTNEED)` on its mapping of guest memory: the host gets the memory back
//! and the guest reads zeroes there next time. Deflated pages need nothing: touching them
//! faults fresh zero pages in.

mod device;
mod event_handler;
pub mod metrics;
pub mod persist;
pub mod request;

use vm_memory::GuestAddress;

pub use device::{Balloon, BalloonConfig};
pub use metrics::BalloonMetrics;

/// Size of each queue.
pub const QUEUE_SIZE: u16 = 256;
/// Index of the inflate queue.
pub const INFLATEQ: usize = 0;
/// Index of the deflate queue.
pub const DEFLATEQ: usize = 1;
/// Index of the reporting queue: the third queue, since the statistics and free page hinting
/// queues (which would come before it) are not offered.
pub const REPORTQ: usize = 2;

/// Constants of the virtio-balloon specification (virtio 1.2, 5.5.3 and 5.5.6).
pub mod defs {
    /// The driver may deflate the balloon when the guest runs out of memory.
    pub const VIRTIO_BALLOON_F_DEFLATE_ON_OOM: u32 = 2;
    /// The driver reports free pages on the reporting queue.
    pub const VIRTIO_BALLOON_F_FREE_PAGE_REPORTING: u32 = 5;
    /// Page frame numbers on the inflate and deflate queues count 4 KiB pages.
    pub const PFN_SHIFT: u32 = 12;
    /// Bytes of a balloon page.
    pub const PAGE_SIZE: u64 = 1 << PFN_SHIFT;
    /// Most page frame numbers accepted in one inflate or deflate request (Linux sends 256).
    pub const MAX_PFNS_PER_REQUEST: usize = 4096;
    /// Length of the configuration space: num_pages, actual, free_page_hint_cmd_id,
    /// poison_val (5.5.4).
    pub const CONFIG_LEN: usize = 16;
    /// Offset of `actual`, the only field the driver writes.
    pub const CONFIG_ACTUAL: u64 = 4;
}

/// Gives guest memory back to the host. Implemented by the VMM, which owns the mapping.
pub trait DiscardMemory: Send + Sync {
    /// Discards the host pages backing `[guest_addr, guest_addr + len)` (only whole host pages
    /// inside the range); they read as zero afterwards. The range lies in guest memory (the
    /// device checked it). Returns the bytes discarded.
    fn discard(&self, guest_addr: GuestAddress, len: u64) -> std::io::Result<u64>;
}

/// Errors of the balloon device's setup.
#[derive(Debug, thiserror::Error)]
pub enum BalloonError {
    /// Creating an eventfd failed.
    #[error("cannot create an eventfd")]
    EventFd(#[source] std::io::Error),
}
