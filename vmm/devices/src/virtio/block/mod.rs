//! virtio-blk (virtio 1.2, 5.2) backed by a raw image file.

mod device;
mod event_handler;
pub mod metrics;
pub mod request;

pub use device::{Block, BlockConfig};
pub use metrics::BlockMetrics;

/// Number of queues.
pub const QUEUE_COUNT: usize = 1;
/// Size of the queue.
pub const QUEUE_SIZE: u16 = 256;
/// Sector size of the virtio-blk protocol.
pub const SECTOR_SIZE: u64 = 512;
/// Maximum descriptors in one request (the `seg_max` we announce, plus header and status).
pub const MAX_DESCRIPTORS: usize = QUEUE_SIZE as usize;
/// Most ranges in one discard or write-zeroes request (the `max_discard_seg` and
/// `max_write_zeroes_seg` we announce). Requests with more are refused before their ranges are
/// read: a chain may repeat the same guest buffer up to 4 GiB.
pub const MAX_DISCARD_SEGMENTS: u32 = 1;

/// Constants of the virtio-blk specification (virtio 1.2, 5.2).
pub mod defs {
    /// Maximum number of segments in a request is in `seg_max`.
    pub const VIRTIO_BLK_F_SEG_MAX: u32 = 2;
    /// The device is read-only.
    pub const VIRTIO_BLK_F_RO: u32 = 5;
    /// Cache flush command support.
    pub const VIRTIO_BLK_F_FLUSH: u32 = 9;
    /// Discard command support.
    pub const VIRTIO_BLK_F_DISCARD: u32 = 13;
    /// Write-zeroes command support.
    pub const VIRTIO_BLK_F_WRITE_ZEROES: u32 = 14;

    /// Read.
    pub const VIRTIO_BLK_T_IN: u32 = 0;
    /// Write.
    pub const VIRTIO_BLK_T_OUT: u32 = 1;
    /// Flush.
    pub const VIRTIO_BLK_T_FLUSH: u32 = 4;
    /// Device id string.
    pub const VIRTIO_BLK_T_GET_ID: u32 = 8;
    /// Discard.
    pub const VIRTIO_BLK_T_DISCARD: u32 = 11;
    /// Write zeroes.
    pub const VIRTIO_BLK_T_WRITE_ZEROES: u32 = 13;

    /// Success.
    pub const VIRTIO_BLK_S_OK: u8 = 0;
    /// Device or driver error.
    pub const VIRTIO_BLK_S_IOERR: u8 = 1;
    /// Unsupported request.
    pub const VIRTIO_BLK_S_UNSUPP: u8 = 2;

    /// `flags` bit of a write-zeroes segment: the range may be deallocated.
    pub const VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP: u32 = 1;
    /// Length of the GET_ID answer.
    pub const VIRTIO_BLK_ID_BYTES: usize = 20;
    /// Length of the request header.
    pub const HEADER_LEN: u64 = 16;
    /// Length of one discard/write-zeroes segment.
    pub const DISCARD_SEGMENT_LEN: u64 = 16;
}

/// Errors of the block device's setup.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The image could not be opened.
    #[error("cannot open disk image {0}")]
    Open(String, #[source] std::io::Error),
    /// The image size could not be read.
    #[error("cannot read the size of disk image {0}")]
    Size(String, #[source] std::io::Error),
    /// Creating an eventfd failed.
    #[error("cannot create an eventfd")]
    EventFd(#[source] std::io::Error),
}
