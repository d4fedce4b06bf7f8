//! Validation of descriptor chains, shared by all devices.
//!
//! [`collect`] turns a chain into a list of [`Segment`]s after checking every rule a device
//! relies on: every buffer lies inside guest memory, readable buffers come before writable ones
//! (virtio 1.2, 2.7.4.2), the chain terminates (no loop, no dangling `next`) and its total
//! length fits in 32 bits. The gather/scatter helpers then move bytes across segments.

use std::ops::Deref;

use virtio_queue::DescriptorChain;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend};

use crate::GuestMemory;

/// Why a chain was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChainError {
    /// A buffer lies (partly) outside guest memory.
    #[error("buffer {addr:#x}+{len:#x} is outside guest memory")]
    OutOfMemory {
        /// Start of the buffer.
        addr: u64,
        /// Its length.
        len: u32,
    },
    /// A device-readable buffer follows a device-writable one.
    #[error("readable descriptor after a writable one")]
    ReadableAfterWritable,
    /// The chain did not end: a loop, an out-of-range `next`, or longer than the queue.
    #[error("descriptor chain does not terminate")]
    Unterminated,
    /// The chain has more descriptors than the device accepts.
    #[error("descriptor chain longer than {0} descriptors")]
    TooLong(usize),
    /// The buffers add up to more than 4 GiB.
    #[error("descriptor chain longer than 4 GiB")]
    TooLarge,
}

/// One validated buffer of a chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Guest physical address.
    pub addr: GuestAddress,
    /// Length in bytes.
    pub len: u32,
    /// The device may write it (else only read).
    pub writable: bool,
}

/// The validated buffers of a chain, readable ones first.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Buffers {
    /// Device-readable buffers, in order.
    pub readable: Vec<Segment>,
    /// Device-writable buffers, in order.
    pub writable: Vec<Segment>,
}

impl Buffers {
    /// Total length of the readable buffers.
    pub fn readable_len(&self) -> u64 {
        self.readable.iter().map(|s| u64::from(s.len)).sum()
    }

    /// Total length of the writable buffers.
    pub fn writable_len(&self) -> u64 {
        self.writable.iter().map(|s| u64::from(s.len)).sum()
    }
}

/// Validates `chain` (at most `max_descriptors` long) and returns its buffers.
pub fn collect<M>(
    chain: DescriptorChain<M>,
    mem: &GuestMemory,
    max_descriptors: usize,
) -> Result<Buffers, ChainError>
where
    M: Deref<Target = GuestMemory>,
{
    let mut buffers = Buffers::default();
    let mut total: u64 = 0;
    let mut count = 0usize;
    let mut terminated = false;
    for desc in chain {
        count += 1;
        if count > max_descriptors {
            return Err(ChainError::TooLong(max_descriptors));
        }
        let addr = desc.addr();
        let len = desc.len();
        if len > 0 && !GuestMemoryBackend::check_range(mem, addr, len as usize) {
            return Err(ChainError::OutOfMemory {
                addr: addr.raw_value(),
                len,
            });
        }
        total += u64::from(len);
        if total > u64::from(u32::MAX) {
            return Err(ChainError::TooLarge);
        }
        let seg = Segment {
            addr,
            len,
            writable: desc.is_write_only(),
        };
        if seg.writable {
            buffers.writable.push(seg);
        } else if !buffers.writable.is_empty() {
            return Err(ChainError::ReadableAfterWritable);
        } else {
            buffers.readable.push(seg);
        }
        terminated = !desc.has_next();
    }
    if !terminated {
        return Err(ChainError::Unterminated);
    }
    Ok(buffers)
}

/// The part `[skip, skip + len)` of the concatenation of `segs`, as segments. Returns `None`
/// when the segments are shorter than `skip + len`.
pub fn sub_segments(segs: &[Segment], mut skip: u64, mut len: u64) -> Option<Vec<Segment>> {
    let mut out = Vec::new();
    for seg in segs {
        if len == 0 {
            break;
        }
        let seg_len = u64::from(seg.len);
        if skip >= seg_len {
            skip -= seg_len;
            continue;
        }
        let take = (seg_len - skip).min(len);
        out.push(Segment {
            addr: seg.addr.unchecked_add(skip),
            len: take as u32,
            writable: seg.writable,
        });
        len -= take;
        skip = 0;
    }
    (len == 0).then_some(out)
}

/// Reads `buf.len()` bytes from the concatenation of `segs`, starting at byte `skip`.
pub fn gather(
    mem: &GuestMemory,
    segs: &[Segment],
    skip: u64,
    buf: &mut [u8],
) -> Result<(), vm_memory::GuestMemoryError> {
    let parts = sub_segments(segs, skip, buf.len() as u64).ok_or(
        vm_memory::GuestMemoryError::PartialBuffer {
            expected: buf.len(),
            completed: 0,
        },
    )?;
    let mut done = 0usize;
    for part in parts {
        let n = part.len as usize;
        mem.read_slice(&mut buf[done..done + n], part.addr)?;
        done += n;
    }
    Ok(())
}

/// Writes `buf` into the concatenation of `segs`, starting at byte `skip`.
pub fn scatter(
    mem: &GuestMemory,
    segs: &[Segment],
    skip: u64,
    buf: &[u8],
) -> Result<(), vm_memory::GuestMemoryError> {
    let parts = sub_segments(segs, skip, buf.len() as u64).ok_or(
        vm_memory::GuestMemoryError::PartialBuffer {
            expected: buf.len(),
            completed: 0,
        },
    )?;
    let mut done = 0usize;
    for part in parts {
        let n = part.len as usize;
        mem.write_slice(&buf[done..done + n], part.addr)?;
        done += n;
    }
    Ok(())
}

/// Test helpers: guest memory and a mock split queue to build chains in.
#[cfg(test)]
pub(crate) mod test_utils {
    use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::GuestAddress;

    use crate::GuestMemory;

    /// 16 MiB of guest memory at 0.
    pub fn memory() -> GuestMemory {
        GuestMemory::from_ranges(&[(GuestAddress(0), 16 << 20)]).expect("guest memory")
    }

    /// Descriptor description for [`chain_descs`]: (addr, len, writable).
    pub type Desc = (u64, u32, bool);

    /// Raw descriptors forming one chain starting at table index `first`.
    pub fn chain_descs(descs: &[Desc], first: u16) -> Vec<RawDescriptor> {
        descs
            .iter()
            .enumerate()
            .map(|(i, &(addr, len, writable))| {
                let mut flags = 0u16;
                if writable {
                    flags |= VRING_DESC_F_WRITE as u16;
                }
                if i + 1 < descs.len() {
                    flags |= VRING_DESC_F_NEXT as u16;
                }
                RawDescriptor::from(SplitDescriptor::new(addr, len, flags, first + i as u16 + 1))
            })
            .collect()
    }

    /// A mock queue of `size` entries at 0x1000 with one chain made of `descs`.
    pub fn queue_with_chain<'a>(
        mem: &'a GuestMemory,
        size: u16,
        descs: &[Desc],
    ) -> MockSplitQueue<'a, GuestMemory> {
        let q = MockSplitQueue::create(mem, GuestAddress(0x1000), size);
        q.add_desc_chains(&chain_descs(descs, 0), 0)
            .expect("add chain");
        q
    }
}

#[cfg(test)]
mod tests {
    use super::test_utils::*;
    use super::*;
    use virtio_bindings::bindings::virtio_ring::VRING_DESC_F_NEXT;
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::{Queue, QueueT};

    fn collect_first(
        q: &virtio_queue::mock::MockSplitQueue<'_, GuestMemory>,
        mem: &GuestMemory,
    ) -> Result<Buffers, ChainError> {
        let mut queue: Queue = q.create_queue().unwrap();
        let chain = queue.pop_descriptor_chain(mem).expect("a chain");
        collect(chain, mem, 64)
    }

    #[test]
    fn test_collect_valid_chain() {
        let mem = memory();
        let q = queue_with_chain(
            &mem,
            16,
            &[
                (0x10000, 16, false),
                (0x20000, 512, true),
                (0x30000, 1, true),
            ],
        );
        let b = collect_first(&q, &mem).unwrap();
        assert_eq!(b.readable.len(), 1);
        assert_eq!(b.writable.len(), 2);
        assert_eq!(b.readable_len(), 16);
        assert_eq!(b.writable_len(), 513);
    }

    #[test]
    fn test_collect_rejects_out_of_memory() {
        let mem = memory();
        let q = queue_with_chain(&mem, 16, &[(0x10000, 16, false), ((16 << 20) - 4, 8, true)]);
        assert_eq!(
            collect_first(&q, &mem),
            Err(ChainError::OutOfMemory {
                addr: (16 << 20) - 4,
                len: 8
            })
        );
    }

    #[test]
    fn test_collect_rejects_wrong_direction() {
        let mem = memory();
        let q = queue_with_chain(&mem, 16, &[(0x10000, 16, true), (0x20000, 16, false)]);
        assert_eq!(
            collect_first(&q, &mem),
            Err(ChainError::ReadableAfterWritable)
        );
    }

    #[test]
    fn test_collect_rejects_loop() {
        let mem = memory();
        let q = virtio_queue::mock::MockSplitQueue::create(&mem, GuestAddress(0x1000), 8);
        // Descriptor 0 -> 1 -> 0 -> ...
        let descs = [
            RawDescriptor::from(SplitDescriptor::new(
                0x10000,
                16,
                VRING_DESC_F_NEXT as u16,
                1,
            )),
            RawDescriptor::from(SplitDescriptor::new(
                0x10000,
                16,
                VRING_DESC_F_NEXT as u16,
                0,
            )),
        ];
        q.add_desc_chains(&descs, 0).unwrap();
        assert_eq!(collect_first(&q, &mem), Err(ChainError::Unterminated));
    }

    #[test]
    fn test_collect_rejects_dangling_next() {
        let mem = memory();
        let q = virtio_queue::mock::MockSplitQueue::create(&mem, GuestAddress(0x1000), 8);
        let descs = [RawDescriptor::from(SplitDescriptor::new(
            0x10000,
            16,
            VRING_DESC_F_NEXT as u16,
            200,
        ))];
        q.add_desc_chains(&descs, 0).unwrap();
        assert_eq!(collect_first(&q, &mem), Err(ChainError::Unterminated));
    }

    #[test]
    fn test_collect_rejects_too_long() {
        let mem = memory();
        let descs: Vec<Desc> = (0..10).map(|i| (0x10000 + i * 0x100, 16, false)).collect();
        let q = queue_with_chain(&mem, 16, &descs);
        let mut queue: Queue = q.create_queue().unwrap();
        let chain = queue.pop_descriptor_chain(&mem).unwrap();
        assert_eq!(collect(chain, &mem, 4), Err(ChainError::TooLong(4)));
    }

    #[test]
    fn test_gather_scatter_across_segments() {
        let mem = memory();
        let segs = [
            Segment {
                addr: GuestAddress(0x10000),
                len: 3,
                writable: true,
            },
            Segment {
                addr: GuestAddress(0x20000),
                len: 5,
                writable: true,
            },
        ];
        scatter(&mem, &segs, 1, b"abcdef").unwrap();
        let mut out = [0u8; 6];
        gather(&mem, &segs, 1, &mut out).unwrap();
        assert_eq!(&out, b"abcdef");
        assert!(scatter(&mem, &segs, 4, b"abcde").is_err());
        assert_eq!(sub_segments(&segs, 2, 2).unwrap().len(), 2);
        assert!(sub_segments(&segs, 0, 9).is_none());
    }
}
