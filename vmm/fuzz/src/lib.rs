//! The guest side of the fuzz targets: a fuzz input becomes a virtio driver that sets a device
//! up through its virtio-mmio registers, lays descriptor chains and buffers out in guest memory
//! and notifies queues, exactly as a guest kernel does. The device then runs through the same
//! `MmioTransport` and `event-manager` loop as in the VMM, so everything a guest can reach by
//! notifying a queue is exercised: chain validation, request/packet parsing, execution and the
//! host backend.
//!
//! # Input format
//!
//! All integers are little endian; a truncated input reads as zeroes.
//!
//! - Setup: `u32` mask of device features (bits 0..31) the driver declines, then one byte per
//!   queue: the queue size is the device's maximum shifted right by `byte % 9`.
//! - Then commands, each one opcode byte ([`op`]) and its operands:
//!   - [`op::ADD_CHAIN`] `queue: u8, count: u8` then `count % 64 + 1` descriptors, each
//!     `ctl: u8` ([`ctl`]), an address (`u16` offset into the data area at [`DATA_START`], or
//!     a raw `u64` with [`ctl::RAW_ADDR`]), a length (`u16` scaled by [`ctl::LEN_SHIFT`], or a
//!     raw `u32` with [`ctl::RAW_LEN`]) and, with [`ctl::RAW_NEXT`], a raw `u16` next index.
//!     The chain takes the next free slots of the descriptor table and is published in the
//!     avail ring.
//!   - [`op::NOTIFY`] `queue: u8`: a QueueNotify register write, then the event loop runs.
//!   - [`op::WRITE_DATA`] `offset: u16, len: u8, bytes`: buffer contents in the data area.
//!   - [`op::POKE_RINGS`] `offset: u16, len: u8, bytes`: raw bytes over the descriptor tables
//!     and rings (corrupt indices, flags, `next` fields).
//!   - [`op::MMIO_WRITE`] `register: u8, value: u32`: any 32-bit register write (at
//!     `register * 4`, including status resets and config space), then the event loop runs.
//!   - [`op::MMIO_READ`] `offset: u16, width: u8`: a register or config space read.
//!   - [`op::DEVICE`] and above: a command of the target (its host side: backend peer,
//!     host sockets), given `opcode - DEVICE`.
//! - At the end every queue is notified once more and the event loop runs.

#![forbid(unsafe_code)]

pub mod targets;

use std::sync::{Arc, Mutex};

use devices::bus::BusDevice;
use devices::interrupt::NoInterrupt;
use devices::transport::MmioTransport;
use devices::virtio::VirtioDevice;
use devices::GuestMemory;
use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use virtio_queue::desc::split::Descriptor;
use vm_memory::{Bytes, GuestAddress};

/// Size of guest memory.
pub const MEM_SIZE: usize = 1 << 20;
/// Start of the data area that short descriptor addresses point into.
pub const DATA_START: u64 = 0x1_0000;
/// Distance between the rings of two queues.
const RING_STRIDE: u64 = 0x4000;
/// Offset of a queue's avail ring from its descriptor table.
const AVAIL_OFFSET: u64 = 0x1000;
/// Offset of a queue's used ring from its descriptor table.
const USED_OFFSET: u64 = 0x2000;
/// Most queues of a device (vsock has three).
const MAX_QUEUES: usize = 3;
/// End of the rings area.
const RINGS_END: u64 = RING_STRIDE * MAX_QUEUES as u64;
/// Most descriptors in a chain the harness publishes.
const MAX_CHAIN: u8 = 64;
/// Rounds of the event loop after which a device that still has ready events is busy-looping.
const MAX_EVENT_ROUNDS: usize = 64;

/// Opcodes of the commands.
pub mod op {
    /// Publish a descriptor chain.
    pub const ADD_CHAIN: u8 = 0;
    /// Notify a queue and run the event loop.
    pub const NOTIFY: u8 = 1;
    /// Write buffer contents into the data area.
    pub const WRITE_DATA: u8 = 2;
    /// Write raw bytes over the rings.
    pub const POKE_RINGS: u8 = 3;
    /// Write an MMIO register.
    pub const MMIO_WRITE: u8 = 4;
    /// Read an MMIO register or config space.
    pub const MMIO_READ: u8 = 5;
    /// First opcode handed to the target.
    pub const DEVICE: u8 = 6;
}

/// Bits of a descriptor's `ctl` byte.
pub mod ctl {
    /// Device-writable buffer.
    pub const WRITE: u8 = 0x01;
    /// Set VIRTQ_DESC_F_INDIRECT.
    pub const INDIRECT: u8 = 0x02;
    /// A raw `u16` next index follows; `NEXT` decides the next flag.
    pub const RAW_NEXT: u8 = 0x04;
    /// With `RAW_NEXT`: set VIRTQ_DESC_F_NEXT.
    pub const NEXT: u8 = 0x08;
    /// The address is a raw `u64`.
    pub const RAW_ADDR: u8 = 0x10;
    /// The length is a raw `u32`.
    pub const RAW_LEN: u8 = 0x20;
    /// Bits 6 and 7 (`ctl >> LEN_SHIFT`): the `u16` length is shifted left by 4 times this
    /// value, so that one descriptor can cover most of guest memory.
    pub const LEN_SHIFT: u8 = 6;
}

/// Descriptor flags (virtio 1.2, 2.7.5).
mod desc_flags {
    pub const NEXT: u16 = 1;
    pub const WRITE: u16 = 2;
    pub const INDIRECT: u16 = 4;
}

/// virtio-mmio register offsets (virtio 1.2, 4.2.2).
mod regs {
    pub const DRIVER_FEATURES: u64 = 0x020;
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    pub const QUEUE_SEL: u64 = 0x030;
    pub const QUEUE_NUM: u64 = 0x038;
    pub const QUEUE_READY: u64 = 0x044;
    pub const QUEUE_NOTIFY: u64 = 0x050;
    pub const STATUS: u64 = 0x070;
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    pub const QUEUE_DRIVER_LOW: u64 = 0x090;
    pub const QUEUE_DRIVER_HIGH: u64 = 0x094;
    pub const QUEUE_DEVICE_LOW: u64 = 0x0a0;
    pub const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
    /// End of registers and config space the harness touches.
    pub const WINDOW: u16 = 0x200;
}

/// Device status bits (virtio 1.2, 2.1).
mod status {
    pub const ACKNOWLEDGE: u32 = 1;
    pub const DRIVER: u32 = 2;
    pub const DRIVER_OK: u32 = 4;
    pub const FEATURES_OK: u32 = 8;
}

/// Reads the fuzz input; past its end every read is zero.
pub struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    /// Reads `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Reader { data }
    }

    /// Whether everything was read.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Up to `n` bytes.
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (head, tail) = self.data.split_at(n.min(self.data.len()));
        self.data = tail;
        head
    }

    fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        let b = self.bytes(N);
        out[..b.len()].copy_from_slice(b);
        out
    }

    /// One byte.
    pub fn u8(&mut self) -> u8 {
        self.array::<1>()[0]
    }

    /// A little-endian `u16`.
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.array())
    }

    /// A little-endian `u32`.
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.array())
    }

    /// A little-endian `u64`.
    pub fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.array())
    }
}

/// The driver's view of one queue.
struct DriverQueue {
    size: u16,
    desc_table: u64,
    avail_ring: u64,
    /// Next free descriptor slot.
    next_desc: u16,
    /// The driver's avail index.
    avail_idx: u16,
}

/// Everything the device event loop dispatches to.
type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// One device, set up by the fuzz input's driver.
pub struct Session {
    /// Guest memory.
    pub mem: GuestMemory,
    transport: MmioTransport,
    manager: EventManager<Subscriber>,
    queues: Vec<DriverQueue>,
}

impl Session {
    /// Puts `device` behind a virtio-mmio transport and an event loop, and initialises it as a
    /// driver does, with the features and queue sizes the input's setup chooses.
    pub fn new<D>(device: Arc<Mutex<D>>, r: &mut Reader<'_>) -> Self
    where
        D: VirtioDevice + MutEventSubscriber + Send + 'static,
    {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), MEM_SIZE)])
            .expect("1 MiB of anonymous guest memory");
        let (max_sizes, avail_features) = {
            let d = device.lock().expect("device lock");
            (d.queue_max_sizes().to_vec(), d.avail_features())
        };
        assert!(
            max_sizes.len() <= MAX_QUEUES,
            "the harness lays out 3 queues at most"
        );
        let as_device: Arc<Mutex<dyn VirtioDevice>> = device.clone();
        let transport = MmioTransport::new(mem.clone(), as_device, Arc::new(NoInterrupt))
            .expect("the transport clones the device's eventfds");
        let mut manager: EventManager<Subscriber> =
            EventManager::new().expect("an epoll instance for the event loop");
        let as_subscriber: Subscriber = device;
        manager.add_subscriber(as_subscriber);
        let mut s = Session {
            mem,
            transport,
            manager,
            queues: Vec::new(),
        };

        // virtio 1.2, 3.1.1: ACKNOWLEDGE, DRIVER, features, FEATURES_OK, queues, DRIVER_OK.
        let acked = avail_features & !u64::from(r.u32());
        s.mmio_write(regs::STATUS, status::ACKNOWLEDGE);
        s.mmio_write(regs::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        s.mmio_write(regs::DRIVER_FEATURES_SEL, 0);
        s.mmio_write(regs::DRIVER_FEATURES, acked as u32);
        s.mmio_write(regs::DRIVER_FEATURES_SEL, 1);
        s.mmio_write(regs::DRIVER_FEATURES, (acked >> 32) as u32);
        let features_ok = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
        s.mmio_write(regs::STATUS, features_ok);
        for (i, &max) in max_sizes.iter().enumerate() {
            let size = (max >> (r.u8() % 9)).max(1);
            let desc_table = i as u64 * RING_STRIDE;
            let avail_ring = desc_table + AVAIL_OFFSET;
            let used_ring = desc_table + USED_OFFSET;
            s.mmio_write(regs::QUEUE_SEL, i as u32);
            s.mmio_write(regs::QUEUE_NUM, u32::from(size));
            for (low, high, addr) in [
                (regs::QUEUE_DESC_LOW, regs::QUEUE_DESC_HIGH, desc_table),
                (regs::QUEUE_DRIVER_LOW, regs::QUEUE_DRIVER_HIGH, avail_ring),
                (regs::QUEUE_DEVICE_LOW, regs::QUEUE_DEVICE_HIGH, used_ring),
            ] {
                s.mmio_write(low, addr as u32);
                s.mmio_write(high, (addr >> 32) as u32);
            }
            s.mmio_write(regs::QUEUE_READY, 1);
            s.queues.push(DriverQueue {
                size,
                desc_table,
                avail_ring,
                next_desc: 0,
                avail_idx: 0,
            });
        }
        s.mmio_write(regs::STATUS, features_ok | status::DRIVER_OK);
        s.run_events();
        s
    }

    /// A 32-bit register write, as a vCPU's MMIO exit delivers it.
    pub fn mmio_write(&mut self, offset: u64, value: u32) {
        self.transport.write(offset, &value.to_le_bytes());
    }

    /// Runs the device event loop until nothing is ready.
    ///
    /// # Panics
    ///
    /// When the loop still dispatches events after [`MAX_EVENT_ROUNDS`] rounds without any new
    /// input: the device would spin the VMM's event thread.
    pub fn run_events(&mut self) {
        for _ in 0..MAX_EVENT_ROUNDS {
            match self.manager.run_with_timeout(0) {
                Ok(0) => return,
                Ok(_) => {}
                Err(e) => panic!("the device event loop failed: {e:?}"),
            }
        }
        panic!("the device event loop is still busy after {MAX_EVENT_ROUNDS} rounds");
    }

    /// Notifies queue `index` (any value: a bad index is the transport's to refuse) and runs
    /// the event loop.
    pub fn notify(&mut self, index: u32) {
        self.mmio_write(regs::QUEUE_NOTIFY, index);
        self.run_events();
    }

    fn add_chain(&mut self, r: &mut Reader<'_>) {
        if self.queues.is_empty() {
            return;
        }
        let qi = usize::from(r.u8()) % self.queues.len();
        let q = &mut self.queues[qi];
        let count = u16::from(r.u8() % MAX_CHAIN + 1).min(q.size);
        let head = q.next_desc;
        for k in 0..count {
            let idx = (head + k) % q.size;
            let c = r.u8();
            let addr = if c & ctl::RAW_ADDR != 0 {
                r.u64()
            } else {
                DATA_START + u64::from(r.u16())
            };
            let len = if c & ctl::RAW_LEN != 0 {
                r.u32()
            } else {
                u32::from(r.u16()) << (4 * (c >> ctl::LEN_SHIFT))
            };
            let mut flags = 0u16;
            if c & ctl::WRITE != 0 {
                flags |= desc_flags::WRITE;
            }
            if c & ctl::INDIRECT != 0 {
                flags |= desc_flags::INDIRECT;
            }
            let next = if c & ctl::RAW_NEXT != 0 {
                if c & ctl::NEXT != 0 {
                    flags |= desc_flags::NEXT;
                }
                r.u16()
            } else {
                if k + 1 < count {
                    flags |= desc_flags::NEXT;
                }
                (idx + 1) % q.size
            };
            let desc = Descriptor::new(addr, len, flags, next);
            self.mem
                .write_obj(desc, GuestAddress(q.desc_table + 16 * u64::from(idx)))
                .expect("the descriptor table lies in guest memory");
        }
        q.next_desc = (head + count) % q.size;
        // struct virtq_avail { le16 flags; le16 idx; le16 ring[size]; ... }
        let slot = q.avail_ring + 4 + 2 * u64::from(q.avail_idx % q.size);
        q.avail_idx = q.avail_idx.wrapping_add(1);
        self.mem
            .write_obj(head.to_le(), GuestAddress(slot))
            .expect("the avail ring lies in guest memory");
        self.mem
            .write_obj(q.avail_idx.to_le(), GuestAddress(q.avail_ring + 2))
            .expect("the avail ring lies in guest memory");
    }

    /// Runs one generic command; returns the target's opcode for the others.
    fn command(&mut self, opcode: u8, r: &mut Reader<'_>) -> Option<u8> {
        match opcode {
            op::ADD_CHAIN => self.add_chain(r),
            op::NOTIFY => {
                let index = u32::from(r.u8()) % (self.queues.len() as u32 + 1);
                self.notify(index);
            }
            op::WRITE_DATA => {
                let addr = DATA_START + u64::from(r.u16());
                let len = usize::from(r.u8());
                let bytes = r.bytes(len);
                self.mem
                    .write_slice(bytes, GuestAddress(addr))
                    .expect("the data area is 64 KiB + 255 bytes long");
            }
            op::POKE_RINGS => {
                let addr = u64::from(r.u16()) % RINGS_END;
                let len = usize::from(r.u8() % 16 + 1);
                let bytes = r.bytes(len);
                self.mem
                    .write_slice(bytes, GuestAddress(addr))
                    .expect("the rings lie in guest memory");
            }
            op::MMIO_WRITE => {
                let offset = u64::from(r.u8()) * 4;
                let value = r.u32();
                self.mmio_write(offset, value);
                self.run_events();
            }
            op::MMIO_READ => {
                let offset = u64::from(r.u16() % regs::WINDOW);
                let mut data = [0u8; 8];
                let width = [1, 2, 4, 8][usize::from(r.u8() % 4)];
                self.transport.read(offset, &mut data[..width]);
            }
            other => return Some(other - op::DEVICE),
        }
        None
    }

    /// Runs every command of the input, handing the target's own to `device_command`, then
    /// notifies every queue a last time.
    pub fn drive<F>(&mut self, r: &mut Reader<'_>, mut device_command: F)
    where
        F: FnMut(&mut Session, u8, &mut Reader<'_>),
    {
        while !r.is_empty() {
            let opcode = r.u8();
            if let Some(device_op) = self.command(opcode, r) {
                device_command(self, device_op, r);
            }
        }
        for i in 0..self.queues.len() {
            self.notify(i as u32);
        }
    }
}

/// Builds inputs in the format above, for seeds.
#[derive(Debug, Default, Clone)]
pub struct SeedBuilder {
    bytes: Vec<u8>,
}

/// A descriptor for [`SeedBuilder::chain`]: data-area offset, length, device-writable.
pub type SeedDesc = (u16, u16, bool);

impl SeedBuilder {
    /// Setup accepting every feature, with `queues` queues of the maximum size.
    pub fn new(queues: usize) -> Self {
        let mut bytes = 0u32.to_le_bytes().to_vec();
        bytes.extend(std::iter::repeat_n(0u8, queues));
        SeedBuilder { bytes }
    }

    /// Setup declining `declined` features, with queue size shifts `shifts`.
    pub fn with_setup(declined: u32, shifts: &[u8]) -> Self {
        let mut bytes = declined.to_le_bytes().to_vec();
        bytes.extend_from_slice(shifts);
        SeedBuilder { bytes }
    }

    /// Publishes a chain of well-formed descriptors on `queue`.
    pub fn chain(mut self, queue: u8, descs: &[SeedDesc]) -> Self {
        assert!(!descs.is_empty() && descs.len() <= usize::from(MAX_CHAIN));
        self.bytes
            .extend_from_slice(&[op::ADD_CHAIN, queue, descs.len() as u8 - 1]);
        for &(offset, len, writable) in descs {
            self.bytes.push(if writable { ctl::WRITE } else { 0 });
            self.bytes.extend_from_slice(&offset.to_le_bytes());
            self.bytes.extend_from_slice(&len.to_le_bytes());
        }
        self
    }

    /// Writes `data` at `offset` of the data area.
    pub fn data(mut self, offset: u16, data: &[u8]) -> Self {
        for (i, chunk) in data.chunks(255).enumerate() {
            self.bytes.push(op::WRITE_DATA);
            self.bytes
                .extend_from_slice(&(offset + 255 * i as u16).to_le_bytes());
            self.bytes.push(chunk.len() as u8);
            self.bytes.extend_from_slice(chunk);
        }
        self
    }

    /// Notifies `queue`.
    pub fn notify(mut self, queue: u8) -> Self {
        self.bytes.extend_from_slice(&[op::NOTIFY, queue]);
        self
    }

    /// A target command and its operands.
    pub fn device(mut self, opcode: u8, operands: &[u8]) -> Self {
        self.bytes.push(op::DEVICE + opcode);
        self.bytes.extend_from_slice(operands);
        self
    }

    /// The input.
    pub fn build(self) -> Vec<u8> {
        self.bytes
    }
}
