//! The virtio-blk device: configuration, activation and request execution.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::num::Wrapping;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use nix::fcntl::{fallocate, FallocateFlags};
use virtio_queue::QueueT;
use vm_memory::Bytes;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::defs::*;
use super::metrics::BlockMetrics;
use super::request::{self, Request, RequestType};
use super::{BlockError, MAX_DESCRIPTORS, MAX_DISCARD_SEGMENTS, QUEUE_SIZE, SECTOR_SIZE};
use crate::virtio::chain::{self, scatter};
use crate::virtio::defs::{device_type, features::VIRTIO_F_VERSION_1};
use crate::virtio::{feature_bit, read_config_bytes, ActivateError, ActiveQueues, VirtioDevice};
use crate::{warn_guest, GuestMemory};

/// Settings of one disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockConfig {
    /// Identifier, returned to the guest by GET_ID (first 20 bytes).
    pub id: String,
    /// Raw image file.
    pub path: std::path::PathBuf,
    /// Refuse writes.
    pub read_only: bool,
}

enum DeviceState {
    Inactive,
    Activated(ActiveQueues),
}

/// A virtio-blk device on a raw image file.
pub struct Block {
    config: BlockConfig,
    file: File,
    capacity_sectors: u64,
    avail_features: u64,
    config_space: Vec<u8>,
    queue_evts: Vec<EventFd>,
    state: DeviceState,
    metrics: Arc<BlockMetrics>,
}

/// Outcome of one request: the status byte and the bytes written into guest buffers.
struct Completion {
    status: u8,
    data_written: u32,
}

impl Completion {
    fn ok(data_written: u32) -> Self {
        Completion {
            status: VIRTIO_BLK_S_OK,
            data_written,
        }
    }
    fn ioerr() -> Self {
        Completion {
            status: VIRTIO_BLK_S_IOERR,
            data_written: 0,
        }
    }
}

impl Block {
    /// Opens the image (read-only when asked) and sizes the device from it. A trailing partial
    /// sector is not exposed.
    pub fn new(config: BlockConfig) -> Result<Self, BlockError> {
        let display = config.path.display().to_string();
        let mut file = OpenOptions::new()
            .read(true)
            .write(!config.read_only)
            .open(&config.path)
            .map_err(|e| BlockError::Open(display.clone(), e))?;
        let size = image_size(&mut file).map_err(|e| BlockError::Size(display, e))?;
        let capacity_sectors = size / SECTOR_SIZE;
        let mut avail_features = feature_bit(VIRTIO_F_VERSION_1)
            | feature_bit(VIRTIO_BLK_F_SEG_MAX)
            | feature_bit(VIRTIO_BLK_F_FLUSH);
        if config.read_only {
            avail_features |= feature_bit(VIRTIO_BLK_F_RO);
        } else {
            avail_features |=
                feature_bit(VIRTIO_BLK_F_DISCARD) | feature_bit(VIRTIO_BLK_F_WRITE_ZEROES);
        }
        let queue_evt = EventFd::new(EFD_NONBLOCK).map_err(BlockError::EventFd)?;
        Ok(Block {
            config_space: build_config_space(capacity_sectors),
            config,
            file,
            capacity_sectors,
            avail_features,
            queue_evts: vec![queue_evt],
            state: DeviceState::Inactive,
            metrics: Arc::new(BlockMetrics::default()),
        })
    }

    /// The device's counters.
    pub fn metrics(&self) -> Arc<BlockMetrics> {
        self.metrics.clone()
    }

    /// Capacity in 512-byte sectors.
    pub fn capacity_sectors(&self) -> u64 {
        self.capacity_sectors
    }

    /// The disk's settings.
    pub fn config(&self) -> &BlockConfig {
        &self.config
    }

    /// Drains the queue eventfd and processes every available request.
    pub(super) fn handle_queue_event(&mut self) {
        let _ = self.queue_evts[0].read();
        BlockMetrics::inc(&self.metrics.queue_events);
        self.process_queue();
    }

    /// Processes every available request of the queue.
    pub fn process_queue(&mut self) {
        let DeviceState::Activated(active) = &mut self.state else {
            return;
        };
        let mem = active.mem.clone();
        let mut completed = false;
        loop {
            let queue = &mut active.queues[0];
            // A driver that moves avail.idx more than a queue ahead corrupted the ring.
            match queue.avail_idx(&mem, Ordering::Acquire) {
                Ok(idx) if (idx - Wrapping(queue.next_avail())).0 <= queue.size() => {}
                _ => {
                    warn_guest!(disk = %self.config.id, "invalid avail index; device needs reset");
                    BlockMetrics::inc(&self.metrics.needs_reset);
                    active.interrupt.set_needs_reset();
                    break;
                }
            }
            let Some(chain) = queue.pop_descriptor_chain(&mem) else {
                break;
            };
            let head = chain.head_index();
            let used_len = Self::handle_chain(
                &mut self.file,
                self.capacity_sectors,
                &self.config,
                &self.metrics,
                &mem,
                chain,
            );
            if queue.add_used(&mem, head, used_len).is_err() {
                BlockMetrics::inc(&self.metrics.needs_reset);
                active.interrupt.set_needs_reset();
                break;
            }
            completed = true;
        }
        if completed {
            let queue = &mut active.queues[0];
            if queue.needs_notification(&mem).unwrap_or(true) {
                active.interrupt.signal_used_queue();
            }
        }
    }

    /// Validates, executes and answers one chain; returns the used length.
    fn handle_chain(
        file: &mut File,
        capacity_sectors: u64,
        config: &BlockConfig,
        metrics: &BlockMetrics,
        mem: &GuestMemory,
        chain: virtio_queue::DescriptorChain<&GuestMemory>,
    ) -> u32 {
        let buffers = match chain::collect(chain, mem, MAX_DESCRIPTORS) {
            Ok(b) => b,
            Err(e) => {
                BlockMetrics::inc(&metrics.malformed_chains);
                warn_guest!(disk = %config.id, error = %e, "malformed virtio-blk chain");
                return 0;
            }
        };
        let request = match request::parse(mem, &buffers) {
            Ok(r) => r,
            Err(e) => {
                BlockMetrics::inc(&metrics.malformed_chains);
                warn_guest!(disk = %config.id, error = %e, "malformed virtio-blk request");
                // Answer IOERR when there is a status byte to answer in.
                if let Some(status) = request::status_addr(&buffers) {
                    BlockMetrics::inc(&metrics.io_errors);
                    if mem.write_obj(VIRTIO_BLK_S_IOERR, status).is_ok() {
                        return 1;
                    }
                }
                return 0;
            }
        };
        let completion = execute(file, capacity_sectors, config, metrics, mem, &request);
        match completion.status {
            VIRTIO_BLK_S_IOERR => BlockMetrics::inc(&metrics.io_errors),
            VIRTIO_BLK_S_UNSUPP => BlockMetrics::inc(&metrics.unsupported),
            _ => {}
        }
        if mem
            .write_obj(completion.status, request.status_addr)
            .is_err()
        {
            return 0;
        }
        completion.data_written + 1
    }
}

/// The virtio_blk_config structure (virtio 1.2, 5.2.4).
/// The size of a disk image in bytes. Seeking to the end works for regular files and block
/// devices alike; `metadata().len()` is 0 for a block device.
fn image_size(file: &mut File) -> std::io::Result<u64> {
    let size = file.seek(SeekFrom::End(0))?;
    file.seek(SeekFrom::Start(0))?;
    Ok(size)
}

fn build_config_space(capacity_sectors: u64) -> Vec<u8> {
    let mut c = vec![0u8; 60];
    c[0..8].copy_from_slice(&capacity_sectors.to_le_bytes());
    // seg_max: descriptors minus header and status.
    c[12..16].copy_from_slice(&(u32::from(QUEUE_SIZE) - 2).to_le_bytes());
    // num_queues
    c[34..36].copy_from_slice(&1u16.to_le_bytes());
    // max_discard_sectors, max_discard_seg, discard_sector_alignment
    c[36..40].copy_from_slice(&u32::MAX.to_le_bytes());
    c[40..44].copy_from_slice(&MAX_DISCARD_SEGMENTS.to_le_bytes());
    c[44..48].copy_from_slice(&1u32.to_le_bytes());
    // max_write_zeroes_sectors, max_write_zeroes_seg, write_zeroes_may_unmap
    c[48..52].copy_from_slice(&u32::MAX.to_le_bytes());
    c[52..56].copy_from_slice(&MAX_DISCARD_SEGMENTS.to_le_bytes());
    c[56] = 1;
    c
}

/// Whether `[sector, sector + len_bytes)` lies inside the disk; returns the byte offset.
fn checked_range(capacity_sectors: u64, sector: u64, len_bytes: u64) -> Option<u64> {
    let offset = sector.checked_mul(SECTOR_SIZE)?;
    let end = offset.checked_add(len_bytes)?;
    (end <= capacity_sectors.checked_mul(SECTOR_SIZE)?).then_some(offset)
}

fn execute(
    file: &mut File,
    capacity_sectors: u64,
    config: &BlockConfig,
    metrics: &BlockMetrics,
    mem: &GuestMemory,
    request: &Request,
) -> Completion {
    let writes = matches!(
        request.request_type,
        RequestType::Out | RequestType::Discard | RequestType::WriteZeroes
    );
    if writes && config.read_only {
        warn_guest!(disk = %config.id, "write to a read-only disk");
        return Completion::ioerr();
    }
    match request.request_type {
        RequestType::In | RequestType::Out => {
            if request.data_len % SECTOR_SIZE != 0 {
                warn_guest!(disk = %config.id, len = request.data_len, "i/o length is not a multiple of 512");
                return Completion::ioerr();
            }
            let Some(offset) = checked_range(capacity_sectors, request.sector, request.data_len)
            else {
                warn_guest!(disk = %config.id, sector = request.sector, "i/o beyond the end of the disk");
                return Completion::ioerr();
            };
            if file.seek(SeekFrom::Start(offset)).is_err() {
                return Completion::ioerr();
            }
            for seg in &request.data {
                let res = if request.request_type == RequestType::In {
                    mem.read_exact_volatile_from(seg.addr, file, seg.len as usize)
                } else {
                    mem.write_all_volatile_to(seg.addr, file, seg.len as usize)
                };
                if let Err(e) = res {
                    tracing::error!(disk = %config.id, error = %e, "disk i/o failed");
                    return Completion::ioerr();
                }
            }
            if request.request_type == RequestType::In {
                BlockMetrics::inc(&metrics.read_count);
                BlockMetrics::add(&metrics.read_bytes, request.data_len);
                Completion::ok(request.data_len as u32)
            } else {
                BlockMetrics::inc(&metrics.write_count);
                BlockMetrics::add(&metrics.write_bytes, request.data_len);
                Completion::ok(0)
            }
        }
        RequestType::Flush => {
            BlockMetrics::inc(&metrics.flush_count);
            match file.flush().and_then(|_| file.sync_data()) {
                Ok(()) => Completion::ok(0),
                Err(e) => {
                    tracing::error!(disk = %config.id, error = %e, "disk flush failed");
                    Completion::ioerr()
                }
            }
        }
        RequestType::GetId => {
            BlockMetrics::inc(&metrics.get_id_count);
            let mut id = [0u8; VIRTIO_BLK_ID_BYTES];
            let bytes = config.id.as_bytes();
            let n = bytes.len().min(VIRTIO_BLK_ID_BYTES);
            id[..n].copy_from_slice(&bytes[..n]);
            let len = (request.data_len as usize).min(VIRTIO_BLK_ID_BYTES);
            match scatter(mem, &request.data, 0, &id[..len]) {
                Ok(()) => Completion::ok(len as u32),
                Err(_) => Completion::ioerr(),
            }
        }
        RequestType::Discard | RequestType::WriteZeroes => {
            let discard = request.request_type == RequestType::Discard;
            if discard {
                BlockMetrics::inc(&metrics.discard_count);
            } else {
                BlockMetrics::inc(&metrics.write_zeroes_count);
            }
            let Ok(segments) = request::discard_segments(mem, request) else {
                return Completion::ioerr();
            };
            for seg in segments {
                // Discard must not carry the unmap flag (virtio 1.2, 5.2.6.2); other flag bits
                // are reserved.
                if (discard && seg.flags != 0)
                    || seg.flags & !VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0
                {
                    return Completion {
                        status: VIRTIO_BLK_S_UNSUPP,
                        data_written: 0,
                    };
                }
                let len = u64::from(seg.num_sectors) * SECTOR_SIZE;
                let Some(offset) = checked_range(capacity_sectors, seg.sector, len) else {
                    warn_guest!(disk = %config.id, sector = seg.sector, "discard beyond the end of the disk");
                    return Completion::ioerr();
                };
                // Deallocating keeps a sparse image sparse; zeroing without unmap keeps blocks.
                let punch = discard || seg.flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0;
                if let Err(e) = zero_range(file, offset, len, punch) {
                    tracing::error!(disk = %config.id, error = %e, "discard or write-zeroes failed");
                    return Completion::ioerr();
                }
            }
            Completion::ok(0)
        }
        RequestType::Unsupported(t) => {
            warn_guest!(disk = %config.id, request_type = t, "unsupported virtio-blk request");
            Completion {
                status: VIRTIO_BLK_S_UNSUPP,
                data_written: 0,
            }
        }
    }
}

/// Zeroes `[offset, offset + len)`, deallocating it when `punch`, falling back to writing
/// zeroes where the file system cannot.
fn zero_range(file: &mut File, offset: u64, len: u64, punch: bool) -> std::io::Result<()> {
    if len == 0 {
        return Ok(());
    }
    let flags = if punch {
        FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE
    } else {
        FallocateFlags::FALLOC_FL_ZERO_RANGE | FallocateFlags::FALLOC_FL_KEEP_SIZE
    };
    if fallocate(file.as_raw_fd(), flags, offset as i64, len as i64).is_ok() {
        return Ok(());
    }
    file.seek(SeekFrom::Start(offset))?;
    let zeroes = vec![0u8; 64 * 1024];
    let mut left = len;
    while left > 0 {
        let n = left.min(zeroes.len() as u64) as usize;
        file.write_all(&zeroes[..n])?;
        left -= n as u64;
    }
    Ok(())
}

impl VirtioDevice for Block {
    fn save_state(&self) -> serde_json::Value {
        // The snapshot's memory believes every completed write is on the disk: make it so,
        // so a host crash between the snapshot and the write-back cannot split the two.
        if !self.config.read_only {
            if let Err(e) = self.file.sync_data() {
                tracing::warn!(disk = %self.config.id, error = %e, "cannot sync the disk for a snapshot");
            }
        }
        serde_json::Value::Null
    }

    fn queue_progress(&self) -> Option<Vec<(u16, u16)>> {
        // Requests complete before the event handler returns: nothing is in flight.
        match &self.state {
            DeviceState::Activated(active) => {
                Some(crate::virtio::persist::progress_of(&active.queues))
            }
            DeviceState::Inactive => None,
        }
    }

    fn device_type(&self) -> u32 {
        device_type::BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn avail_features(&self) -> u64 {
        self.avail_features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config_space, offset, data);
    }

    fn activate(&mut self, active: ActiveQueues) -> Result<(), ActivateError> {
        if active.queues.len() != 1 {
            return Err(ActivateError::QueueCount {
                expected: 1,
                got: active.queues.len(),
            });
        }
        BlockMetrics::inc(&self.metrics.activations);
        self.state = DeviceState::Activated(active);
        // Requests may have been queued before DRIVER_OK.
        self.process_queue();
        Ok(())
    }

    fn reset(&mut self) {
        self.state = DeviceState::Inactive;
    }

    fn is_activated(&self) -> bool {
        matches!(self.state, DeviceState::Activated(_))
    }

    fn queue_events(&self) -> &[EventFd] {
        &self.queue_evts
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::interrupt::CountingInterrupt;
    use crate::virtio::chain::test_utils::{memory, queue_with_chain, Desc};
    use crate::virtio::VirtioInterrupt;
    use std::io::Read;
    use std::os::unix::fs::MetadataExt;
    use virtio_queue::Queue;
    use vm_memory::GuestAddress;

    struct Harness {
        block: Block,
        file: tempfile::NamedTempFile,
        irq: Arc<CountingInterrupt>,
        interrupt: Arc<VirtioInterrupt>,
    }

    fn harness(size: u64, read_only: bool) -> Harness {
        let file = tempfile::NamedTempFile::new().unwrap();
        file.as_file().set_len(size).unwrap();
        let block = Block::new(BlockConfig {
            id: "disk0".to_string(),
            path: file.path().to_path_buf(),
            read_only,
        })
        .unwrap();
        let irq = Arc::new(CountingInterrupt::default());
        let interrupt = Arc::new(VirtioInterrupt::new(irq.clone()));
        Harness {
            block,
            file,
            irq,
            interrupt,
        }
    }

    fn header(mem: &GuestMemory, addr: u64, t: u32, sector: u64) {
        mem.write_obj(t.to_le(), GuestAddress(addr)).unwrap();
        mem.write_obj(0u32, GuestAddress(addr + 4)).unwrap();
        mem.write_obj(sector.to_le(), GuestAddress(addr + 8))
            .unwrap();
    }

    /// Runs one chain through an activated device; returns (status byte, used len).
    fn run(h: &mut Harness, mem: &GuestMemory, descs: &[Desc], status_addr: u64) -> (u8, u32) {
        mem.write_obj(0xffu8, GuestAddress(status_addr)).unwrap();
        let q = queue_with_chain(mem, 16, descs);
        let queue: Queue = q.create_queue().unwrap();
        h.block.reset();
        h.block
            .activate(ActiveQueues {
                mem: mem.clone(),
                queues: vec![queue],
                interrupt: h.interrupt.clone(),
                acked_features: h.block.avail_features(),
            })
            .unwrap();
        let used = q.used().ring().ref_at(0).unwrap().load();
        (mem.read_obj(GuestAddress(status_addr)).unwrap(), used.len())
    }

    #[test]
    fn test_write_then_read_back() {
        let mut h = harness(1 << 20, false);
        let mem = memory();
        mem.write_slice(&[0xab; 1024], GuestAddress(0x20000))
            .unwrap();
        header(&mem, 0x10000, VIRTIO_BLK_T_OUT, 2);
        let (status, len) = run(
            &mut h,
            &mem,
            &[
                (0x10000, 16, false),
                (0x20000, 1024, false),
                (0x30000, 1, true),
            ],
            0x30000,
        );
        assert_eq!((status, len), (VIRTIO_BLK_S_OK, 1));
        let mut content = vec![0u8; 1 << 20];
        h.file.as_file().read_exact(&mut content).unwrap();
        assert!(content[1024..2048].iter().all(|&b| b == 0xab));
        assert!(content[..1024].iter().all(|&b| b == 0));

        header(&mem, 0x10000, VIRTIO_BLK_T_IN, 2);
        let (status, len) = run(
            &mut h,
            &mem,
            &[
                (0x10000, 16, false),
                (0x40000, 512, true),
                (0x30000, 1, true),
            ],
            0x30000,
        );
        assert_eq!((status, len), (VIRTIO_BLK_S_OK, 513));
        let mut back = [0u8; 512];
        mem.read_slice(&mut back, GuestAddress(0x40000)).unwrap();
        assert!(back.iter().all(|&b| b == 0xab));
        assert!(h.irq.count.load(Ordering::Relaxed) >= 2);
        assert_eq!(h.block.metrics.write_bytes.load(Ordering::Relaxed), 1024);
    }

    #[test]
    fn test_read_beyond_end_is_ioerr() {
        let mut h = harness(4096, false);
        let mem = memory();
        header(&mem, 0x10000, VIRTIO_BLK_T_IN, 7);
        let (status, _) = run(
            &mut h,
            &mem,
            &[
                (0x10000, 16, false),
                (0x40000, 1024, true),
                (0x30000, 1, true),
            ],
            0x30000,
        );
        assert_eq!(status, VIRTIO_BLK_S_IOERR);
        header(&mem, 0x10000, VIRTIO_BLK_T_IN, u64::MAX / 256);
        let (status, _) = run(
            &mut h,
            &mem,
            &[
                (0x10000, 16, false),
                (0x40000, 512, true),
                (0x30000, 1, true),
            ],
            0x30000,
        );
        assert_eq!(status, VIRTIO_BLK_S_IOERR);
    }

    #[test]
    fn test_unaligned_length_is_ioerr() {
        let mut h = harness(4096, false);
        let mem = memory();
        header(&mem, 0x10000, VIRTIO_BLK_T_IN, 0);
        let (status, _) = run(
            &mut h,
            &mem,
            &[
                (0x10000, 16, false),
                (0x40000, 100, true),
                (0x30000, 1, true),
            ],
            0x30000,
        );
        assert_eq!(status, VIRTIO_BLK_S_IOERR);
    }

    #[test]
    fn test_read_only_refuses_writes() {
        let mut h = harness(4096, true);
        assert_ne!(h.block.avail_features() & feature_bit(VIRTIO_BLK_F_RO), 0);
        let mem = memory();
        header(&mem, 0x10000, VIRTIO_BLK_T_OUT, 0);
        let (status, _) = run(
            &mut h,
            &mem,
            &[
                (0x10000, 16, false),
                (0x20000, 512, false),
                (0x30000, 1, true),
            ],
            0x30000,
        );
        assert_eq!(status, VIRTIO_BLK_S_IOERR);
    }

    #[test]
    fn test_unsupported_and_flush_and_get_id() {
        let mut h = harness(4096, false);
        let mem = memory();
        header(&mem, 0x10000, 99, 0);
        let (status, _) = run(
            &mut h,
            &mem,
            &[(0x10000, 16, false), (0x30000, 1, true)],
            0x30000,
        );
        assert_eq!(status, VIRTIO_BLK_S_UNSUPP);
        header(&mem, 0x10000, VIRTIO_BLK_T_FLUSH, 0);
        let (status, _) = run(
            &mut h,
            &mem,
            &[(0x10000, 16, false), (0x30000, 1, true)],
            0x30000,
        );
        assert_eq!(status, VIRTIO_BLK_S_OK);
        header(&mem, 0x10000, VIRTIO_BLK_T_GET_ID, 0);
        let (status, len) = run(
            &mut h,
            &mem,
            &[
                (0x10000, 16, false),
                (0x40000, 20, true),
                (0x30000, 1, true),
            ],
            0x30000,
        );
        assert_eq!((status, len), (VIRTIO_BLK_S_OK, 21));
        let mut id = [0u8; 5];
        mem.read_slice(&mut id, GuestAddress(0x40000)).unwrap();
        assert_eq!(&id, b"disk0");
    }

    #[test]
    fn test_malformed_chains_are_answered_not_fatal() {
        let mut h = harness(4096, false);
        let mem = memory();
        // Status outside memory: no answer possible, used len 0.
        header(&mem, 0x10000, VIRTIO_BLK_T_IN, 0);
        let q = queue_with_chain(&mem, 16, &[(0x10000, 16, false), (0x1_0000_0000, 1, true)]);
        h.block
            .activate(ActiveQueues {
                mem: mem.clone(),
                queues: vec![q.create_queue().unwrap()],
                interrupt: h.interrupt.clone(),
                acked_features: 0,
            })
            .unwrap();
        assert_eq!(q.used().ring().ref_at(0).unwrap().load().len(), 0);
        // Too-short header: IOERR in the status byte.
        let (status, _) = run(
            &mut h,
            &mem,
            &[(0x10000, 8, false), (0x30000, 1, true)],
            0x30000,
        );
        assert_eq!(status, VIRTIO_BLK_S_IOERR);
        // Writable data before readable data.
        let (status, len) = run(
            &mut h,
            &mem,
            &[(0x30000, 1, true), (0x10000, 16, false)],
            0x30000,
        );
        assert_eq!((status, len), (0xff, 0));
        assert_eq!(h.block.metrics.malformed_chains.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn test_invalid_avail_index_sets_needs_reset() {
        let mut h = harness(4096, false);
        let mem = memory();
        let q = queue_with_chain(&mem, 16, &[(0x10000, 16, false), (0x30000, 1, true)]);
        q.avail().idx().store(100);
        h.block
            .activate(ActiveQueues {
                mem: mem.clone(),
                queues: vec![q.create_queue().unwrap()],
                interrupt: h.interrupt.clone(),
                acked_features: 0,
            })
            .unwrap();
        assert!(h.interrupt.needs_reset());
        assert_eq!(h.block.metrics.needs_reset.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn test_discard_keeps_file_sparse() {
        let mut h = harness(4 << 20, false);
        let mem = memory();
        // Fill the first MiB with data, then discard it.
        h.file.as_file().write_all(&vec![0x5a; 1 << 20]).unwrap();
        h.file.as_file().sync_all().unwrap();
        let allocated_before = h.file.as_file().metadata().unwrap().blocks();
        header(&mem, 0x10000, VIRTIO_BLK_T_DISCARD, 0);
        mem.write_obj(0u64, GuestAddress(0x10010)).unwrap();
        mem.write_obj(((1u32 << 20) / 512).to_le(), GuestAddress(0x10018))
            .unwrap();
        mem.write_obj(0u32, GuestAddress(0x1001c)).unwrap();
        let (status, _) = run(
            &mut h,
            &mem,
            &[(0x10000, 32, false), (0x30000, 1, true)],
            0x30000,
        );
        assert_eq!(status, VIRTIO_BLK_S_OK);
        let allocated_after = h.file.as_file().metadata().unwrap().blocks();
        assert!(
            allocated_after < allocated_before,
            "{allocated_after} < {allocated_before}"
        );
        assert_eq!(h.file.as_file().metadata().unwrap().len(), 4 << 20);
        let mut content = vec![0u8; 1 << 20];
        let mut f = h.file.reopen().unwrap();
        f.read_exact(&mut content).unwrap();
        assert!(content.iter().all(|&b| b == 0));
    }

    #[test]
    fn test_write_zeroes_with_unmap_and_discard_flag_rules() {
        let mut h = harness(1 << 20, false);
        let mem = memory();
        header(&mem, 0x10000, VIRTIO_BLK_T_WRITE_ZEROES, 0);
        mem.write_obj(1u64, GuestAddress(0x10010)).unwrap();
        mem.write_obj(4u32, GuestAddress(0x10018)).unwrap();
        mem.write_obj(VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP, GuestAddress(0x1001c))
            .unwrap();
        let (status, _) = run(
            &mut h,
            &mem,
            &[(0x10000, 32, false), (0x30000, 1, true)],
            0x30000,
        );
        assert_eq!(status, VIRTIO_BLK_S_OK);
        // Discard with the unmap flag is unsupported.
        header(&mem, 0x10000, VIRTIO_BLK_T_DISCARD, 0);
        let (status, _) = run(
            &mut h,
            &mem,
            &[(0x10000, 32, false), (0x30000, 1, true)],
            0x30000,
        );
        assert_eq!(status, VIRTIO_BLK_S_UNSUPP);
        // Beyond the end.
        header(&mem, 0x10000, VIRTIO_BLK_T_WRITE_ZEROES, 0);
        mem.write_obj(2047u64, GuestAddress(0x10010)).unwrap();
        let (status, _) = run(
            &mut h,
            &mem,
            &[(0x10000, 32, false), (0x30000, 1, true)],
            0x30000,
        );
        assert_eq!(status, VIRTIO_BLK_S_IOERR);
    }

    #[test]
    fn test_discard_with_more_segments_than_announced_is_ioerr() {
        // Found in review, reproduced through the blk_request fuzz harness: every range of a
        // discard was read into memory, as many as the chain's length allowed (4 GiB of chain
        // by repeating one buffer).
        let mut h = harness(1 << 20, false);
        let mem = memory();
        h.file.as_file().write_all(&[0x5a; 4096]).unwrap();
        header(&mem, 0x10000, VIRTIO_BLK_T_DISCARD, 0);
        for (i, sector) in [0u64, 4].into_iter().enumerate() {
            let at = 0x10010 + 16 * i as u64;
            mem.write_obj(sector.to_le(), GuestAddress(at)).unwrap();
            mem.write_obj(4u32.to_le(), GuestAddress(at + 8)).unwrap();
            mem.write_obj(0u32, GuestAddress(at + 12)).unwrap();
        }
        let mut cap = [0u8; 4];
        h.block.read_config(40, &mut cap);
        assert_eq!(u32::from_le_bytes(cap), MAX_DISCARD_SEGMENTS);
        let (status, len) = run(
            &mut h,
            &mem,
            &[(0x10000, 16 + 32, false), (0x30000, 1, true)],
            0x30000,
        );
        assert_eq!((status, len), (VIRTIO_BLK_S_IOERR, 1));
        assert_eq!(h.block.metrics.discard_count.load(Ordering::Relaxed), 0);
        let mut content = [0u8; 4096];
        h.file.reopen().unwrap().read_exact(&mut content).unwrap();
        assert!(content.iter().all(|&b| b == 0x5a));
        // Many segments, one buffer repeated: refused the same way.
        let mut descs: Vec<Desc> = vec![(0x10000, 16, false)];
        descs.extend((0..13).map(|_| (0x100000, 0xeff00, false)));
        descs.push((0x30000, 1, true));
        let (status, _) = run(&mut h, &mem, &descs, 0x30000);
        assert_eq!(status, VIRTIO_BLK_S_IOERR);
    }

    #[test]
    fn test_image_size_of_files_and_block_devices() {
        let file = tempfile::NamedTempFile::new().unwrap();
        file.as_file().set_len(3 << 20).unwrap();
        assert_eq!(image_size(&mut file.reopen().unwrap()).unwrap(), 3 << 20);
        // A block device's metadata says 0 bytes; its size comes from seeking. Check every
        // block device of this host that can be opened (none, in an unprivileged sandbox).
        for entry in std::fs::read_dir("/sys/class/block")
            .into_iter()
            .flatten()
            .flatten()
        {
            let sectors: u64 = std::fs::read_to_string(entry.path().join("size"))
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(0);
            let dev = std::path::Path::new("/dev").join(entry.file_name());
            if sectors == 0 {
                continue;
            }
            if let Ok(mut f) = File::open(&dev) {
                assert_eq!(
                    image_size(&mut f).unwrap(),
                    sectors * 512,
                    "{}",
                    dev.display()
                );
            }
        }
        let block = Block::new(BlockConfig {
            id: "d".to_string(),
            path: file.path().to_path_buf(),
            read_only: true,
        })
        .unwrap();
        assert_eq!(block.capacity_sectors(), (3 << 20) / 512);
    }

    #[test]
    fn test_config_space_capacity() {
        let h = harness(10 * 512 + 100, false);
        let mut cap = [0u8; 8];
        h.block.read_config(0, &mut cap);
        assert_eq!(u64::from_le_bytes(cap), 10);
    }
}
