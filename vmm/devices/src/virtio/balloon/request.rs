//! Pure functions from balloon chains to guest ranges: page frame number arrays of the inflate
//! and deflate queues (5.5.6.1), ranges of the reporting queue (5.5.6.5).

use vm_memory::{GuestAddress, GuestMemoryBackend};

use super::defs::{MAX_PFNS_PER_REQUEST, PAGE_SIZE, PFN_SHIFT};
use crate::virtio::chain::{gather, Buffers, Segment};
use crate::GuestMemory;

/// Why a balloon chain was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RequestError {
    /// An inflate or deflate chain has writable buffers, or a report has readable ones.
    #[error("buffers in the wrong direction")]
    WrongDirection,
    /// The array length is not a multiple of 4 bytes.
    #[error("page array of {0} bytes is not a whole number of 4-byte entries")]
    OddLength(u64),
    /// More than [`MAX_PFNS_PER_REQUEST`] entries.
    #[error("page array of {0} bytes is too long")]
    TooLong(u64),
    /// Guest memory could not be read.
    #[error("cannot read the page array")]
    Memory,
}

/// A guest physical range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    /// Start.
    pub addr: GuestAddress,
    /// Length in bytes.
    pub len: u64,
}

/// Reads the page frame numbers of an inflate or deflate request.
pub fn parse_pfns(mem: &GuestMemory, buffers: &Buffers) -> Result<Vec<u32>, RequestError> {
    if !buffers.writable.is_empty() {
        return Err(RequestError::WrongDirection);
    }
    let len = buffers.readable_len();
    if len % 4 != 0 {
        return Err(RequestError::OddLength(len));
    }
    if len > (MAX_PFNS_PER_REQUEST * 4) as u64 {
        return Err(RequestError::TooLong(len));
    }
    let mut bytes = vec![0u8; len as usize];
    gather(mem, &buffers.readable, 0, &mut bytes).map_err(|_| RequestError::Memory)?;
    Ok(bytes
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

/// Turns page frame numbers into ranges, merging consecutive pages (in the order given).
pub fn pfn_ranges(pfns: &[u32]) -> Vec<Range> {
    let mut ranges: Vec<Range> = Vec::new();
    for &pfn in pfns {
        let addr = u64::from(pfn) << PFN_SHIFT;
        match ranges.last_mut() {
            Some(r) if r.addr.0 + r.len == addr => r.len += PAGE_SIZE,
            _ => ranges.push(Range {
                addr: GuestAddress(addr),
                len: PAGE_SIZE,
            }),
        }
    }
    ranges
}

/// Splits `ranges` into those inside guest memory and the count of the others.
pub fn in_memory(mem: &GuestMemory, ranges: Vec<Range>) -> (Vec<Range>, usize) {
    let total = ranges.len();
    let good: Vec<Range> = ranges
        .into_iter()
        .filter(|r| {
            usize::try_from(r.len)
                .map(|len| GuestMemoryBackend::check_range(mem, r.addr, len))
                .unwrap_or(false)
        })
        .collect();
    let bad = total - good.len();
    (good, bad)
}

/// The ranges of a free page report: its device-writable buffers, already checked against
/// guest memory by [`chain::collect`](crate::virtio::chain::collect).
pub fn report_ranges(buffers: &Buffers) -> Result<Vec<Range>, RequestError> {
    if !buffers.readable.is_empty() {
        return Err(RequestError::WrongDirection);
    }
    Ok(buffers
        .writable
        .iter()
        .filter(|s: &&Segment| s.len > 0)
        .map(|s| Range {
            addr: s.addr,
            len: u64::from(s.len),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::chain::test_utils::{memory, queue_with_chain, Desc};
    use crate::virtio::chain::{collect, ChainError};
    use virtio_queue::{Queue, QueueT};
    use vm_memory::Bytes;

    fn buffers(mem: &GuestMemory, descs: &[Desc]) -> Result<Buffers, ChainError> {
        let q = queue_with_chain(mem, 16, descs);
        let mut queue: Queue = q.create_queue().unwrap();
        let chain = queue.pop_descriptor_chain(mem).unwrap();
        collect(chain, mem, 16)
    }

    fn write_pfns(mem: &GuestMemory, addr: u64, pfns: &[u32]) {
        let bytes: Vec<u8> = pfns.iter().flat_map(|p| p.to_le_bytes()).collect();
        mem.write_slice(&bytes, GuestAddress(addr)).unwrap();
    }

    #[test]
    fn test_parse_pfns_and_merge_ranges() {
        let mem = memory();
        write_pfns(&mem, 0x10000, &[0x100, 0x101, 0x102, 0x200, 0x0ff]);
        let b = buffers(
            &mem,
            &[
                (0x10000, 8, false),
                (0x20000, 0, false),
                (0x10008, 12, false),
            ],
        );
        let pfns = parse_pfns(&mem, &b.unwrap()).unwrap();
        assert_eq!(pfns, vec![0x100, 0x101, 0x102, 0x200, 0x0ff]);
        assert_eq!(
            pfn_ranges(&pfns),
            vec![
                Range {
                    addr: GuestAddress(0x100000),
                    len: 3 * 4096
                },
                Range {
                    addr: GuestAddress(0x200000),
                    len: 4096
                },
                Range {
                    addr: GuestAddress(0x0ff000),
                    len: 4096
                },
            ]
        );
    }

    #[test]
    fn test_parse_pfns_refuses_malformed_requests() {
        let mem = memory();
        let b = buffers(&mem, &[(0x10000, 6, false)]).unwrap();
        assert_eq!(parse_pfns(&mem, &b), Err(RequestError::OddLength(6)));
        let b = buffers(&mem, &[(0x10000, 8, false), (0x20000, 4, true)]).unwrap();
        assert_eq!(parse_pfns(&mem, &b), Err(RequestError::WrongDirection));
        let b = buffers(&mem, &[(0x10000, 4 * 4097, false)]).unwrap();
        assert_eq!(parse_pfns(&mem, &b), Err(RequestError::TooLong(4 * 4097)));
        let b = buffers(&mem, &[(0x10000, 0, false)]).unwrap();
        assert_eq!(parse_pfns(&mem, &b), Ok(vec![]));
    }

    #[test]
    fn test_ranges_outside_memory_are_refused() {
        let mem = memory(); // 16 MiB
        let pfns = [0x0ffe, 0x1000, u32::MAX];
        let (good, bad) = in_memory(&mem, pfn_ranges(&pfns));
        assert_eq!(
            good,
            vec![Range {
                addr: GuestAddress(0xffe000),
                len: 4096
            }]
        );
        assert_eq!(bad, 2);
        // A merged range crossing the end is refused whole.
        let (good, bad) = in_memory(&mem, pfn_ranges(&[0x0fff, 0x1000]));
        assert_eq!((good.len(), bad), (0, 1));
        // A report range crossing the end of memory never gets past chain validation.
        assert!(matches!(
            buffers(&mem, &[((16 << 20) - 4096, 8192, true)]),
            Err(ChainError::OutOfMemory { .. })
        ));
    }

    #[test]
    fn test_report_ranges() {
        let mem = memory();
        let b = buffers(
            &mem,
            &[(0x200000, 0x200000, true), (0x600000, 0x1000, true)],
        )
        .unwrap();
        assert_eq!(
            report_ranges(&b).unwrap(),
            vec![
                Range {
                    addr: GuestAddress(0x200000),
                    len: 0x200000
                },
                Range {
                    addr: GuestAddress(0x600000),
                    len: 0x1000
                },
            ]
        );
        let b = buffers(&mem, &[(0x200000, 0x1000, false)]).unwrap();
        assert_eq!(report_ranges(&b), Err(RequestError::WrongDirection));
    }
}
