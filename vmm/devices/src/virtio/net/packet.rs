//! Pure functions between descriptor chains and frames: the transmit side turns a validated
//! chain into a header and a frame, the receive side lays a frame out over receive buffers
//! (virtio 1.2, 5.1.6.2 and 5.1.6.3).

use vm_memory::GuestMemoryError;

use super::defs::{HDR_GSO_NONE, HDR_LEN, MAX_BUFFER_LEN, MAX_FRAME_LEN, MIN_FRAME_LEN};
use crate::virtio::chain::{gather, scatter, Buffers, Segment};
use crate::GuestMemory;

/// `struct virtio_net_hdr_v1`, all fields little endian.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetHeader {
    /// `VIRTIO_NET_HDR_F_*`.
    pub flags: u8,
    /// `VIRTIO_NET_HDR_GSO_*`.
    pub gso_type: u8,
    /// Length of the headers to copy into each GSO segment.
    pub hdr_len: u16,
    /// GSO segment size.
    pub gso_size: u16,
    /// Where checksumming starts.
    pub csum_start: u16,
    /// Where the checksum goes, after `csum_start`.
    pub csum_offset: u16,
    /// Receive buffers a frame spans (`MRG_RXBUF`); unused on transmit.
    pub num_buffers: u16,
}

impl NetHeader {
    /// Decodes the 12 header bytes.
    pub fn from_bytes(b: &[u8; HDR_LEN]) -> Self {
        let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        NetHeader {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u16_at(2),
            gso_size: u16_at(4),
            csum_start: u16_at(6),
            csum_offset: u16_at(8),
            num_buffers: u16_at(10),
        }
    }

    /// Encodes the header.
    pub fn to_bytes(&self) -> [u8; HDR_LEN] {
        let mut b = [0u8; HDR_LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
        b[10..12].copy_from_slice(&self.num_buffers.to_le_bytes());
        b
    }
}

/// Why a transmit chain was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TxError {
    /// The chain has device-writable buffers (5.1.6.2: transmit buffers are read-only).
    #[error("transmit chain has writable buffers")]
    WritableBuffer,
    /// The chain is shorter than the header.
    #[error("transmit chain of {0} bytes is shorter than the {HDR_LEN}-byte header")]
    ShortHeader(u64),
    /// Header and frame exceed [`MAX_BUFFER_LEN`].
    #[error("transmit chain of {0} bytes is larger than {MAX_BUFFER_LEN}")]
    Oversized(u64),
    /// The frame is shorter than an Ethernet header.
    #[error("frame of {0} bytes is shorter than an ethernet header")]
    Runt(u64),
    /// The header asks for an offload that was not negotiated.
    #[error("header asks for an offload (flags {flags:#x}, gso_type {gso_type})")]
    BadHeader {
        /// `flags` of the header.
        flags: u8,
        /// `gso_type` of the header.
        gso_type: u8,
    },
    /// Guest memory could not be read.
    #[error("cannot read the frame from guest memory")]
    Memory,
}

/// Reads the header and frame of a transmit chain whose buffers were validated by
/// [`chain::collect`](crate::virtio::chain::collect), into `frame` (cleared first).
pub fn parse_tx(
    mem: &GuestMemory,
    buffers: &Buffers,
    frame: &mut Vec<u8>,
) -> Result<NetHeader, TxError> {
    frame.clear();
    if !buffers.writable.is_empty() {
        return Err(TxError::WritableBuffer);
    }
    let total = buffers.readable_len();
    if total < HDR_LEN as u64 {
        return Err(TxError::ShortHeader(total));
    }
    if total > MAX_BUFFER_LEN as u64 {
        return Err(TxError::Oversized(total));
    }
    let frame_len = total - HDR_LEN as u64;
    if frame_len < MIN_FRAME_LEN as u64 {
        return Err(TxError::Runt(frame_len));
    }
    let mut hdr = [0u8; HDR_LEN];
    gather(mem, &buffers.readable, 0, &mut hdr).map_err(|_| TxError::Memory)?;
    let header = NetHeader::from_bytes(&hdr);
    // No offload is offered: the driver must not ask for one (5.1.6.2.1). DATA_VALID and
    // RSC_INFO are receive-only flags; any flag is refused.
    if header.flags != 0 || header.gso_type != HDR_GSO_NONE {
        return Err(TxError::BadHeader {
            flags: header.flags,
            gso_type: header.gso_type,
        });
    }
    frame.resize(frame_len as usize, 0);
    gather(mem, &buffers.readable, HDR_LEN as u64, frame).map_err(|_| TxError::Memory)?;
    Ok(header)
}

/// Whether a receive chain may hold (part of) a frame: writable buffers only, at least a header
/// long (5.1.6.3.1: with or without `MRG_RXBUF`, every buffer holds at least the header).
pub fn rx_chain_usable(buffers: &Buffers) -> bool {
    buffers.readable.is_empty() && buffers.writable_len() >= HDR_LEN as u64
}

/// How many of the receive chains with writable lengths `capacities`, in order, the frame of
/// `frame_len` bytes needs with its header; `None` when they are not enough.
pub fn rx_chains_needed(capacities: &[u64], frame_len: usize) -> Option<usize> {
    let mut need = (HDR_LEN + frame_len) as u64;
    for (i, cap) in capacities.iter().enumerate() {
        if *cap >= need {
            return Some(i + 1);
        }
        need -= cap;
    }
    None
}

/// Writes the header (with `num_buffers` = `chains.len()`) and `frame` over `chains`, filling
/// each before the next. Returns the bytes written into each chain. The chains must be enough
/// (see [`rx_chains_needed`]) and the frame at most [`MAX_FRAME_LEN`].
pub fn write_rx(
    mem: &GuestMemory,
    chains: &[&[Segment]],
    frame: &[u8],
) -> Result<Vec<u32>, GuestMemoryError> {
    let header = NetHeader {
        num_buffers: chains.len() as u16,
        ..NetHeader::default()
    };
    let hdr = header.to_bytes();
    let mut lens = Vec::with_capacity(chains.len());
    // Position in the concatenation "header + frame".
    let total = HDR_LEN + frame.len().min(MAX_FRAME_LEN);
    let mut pos = 0usize;
    for segs in chains {
        let cap: u64 = segs.iter().map(|s| u64::from(s.len)).sum();
        let take = (total - pos).min(cap as usize);
        let mut written = 0usize;
        if pos < HDR_LEN {
            let n = (HDR_LEN - pos).min(take);
            scatter(mem, segs, 0, &hdr[pos..pos + n])?;
            written += n;
        }
        if written < take {
            let start = pos + written - HDR_LEN;
            let n = take - written;
            scatter(mem, segs, written as u64, &frame[start..start + n])?;
            written += n;
        }
        pos += written;
        lens.push(written as u32);
        if pos == total {
            break;
        }
    }
    if pos < total {
        return Err(GuestMemoryError::PartialBuffer {
            expected: total,
            completed: pos,
        });
    }
    Ok(lens)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::chain::test_utils::{memory, queue_with_chain, Desc};
    use crate::virtio::chain::{collect, ChainError};
    use crate::virtio::net::defs::HDR_F_NEEDS_CSUM;
    use virtio_queue::{Queue, QueueT};
    use vm_memory::{Bytes, GuestAddress};

    fn buffers(mem: &GuestMemory, descs: &[Desc]) -> Result<Buffers, ChainError> {
        let q = queue_with_chain(mem, 16, descs);
        let mut queue: Queue = q.create_queue().unwrap();
        let chain = queue.pop_descriptor_chain(mem).unwrap();
        collect(chain, mem, 16)
    }

    fn put_frame(mem: &GuestMemory, addr: u64, header: NetHeader, frame: &[u8]) {
        mem.write_slice(&header.to_bytes(), GuestAddress(addr))
            .unwrap();
        mem.write_slice(frame, GuestAddress(addr + HDR_LEN as u64))
            .unwrap();
    }

    #[test]
    fn test_header_roundtrip() {
        let h = NetHeader {
            flags: 1,
            gso_type: 4,
            hdr_len: 0x102,
            gso_size: 0x304,
            csum_start: 0x506,
            csum_offset: 0x708,
            num_buffers: 0x90a,
        };
        let b = h.to_bytes();
        assert_eq!(b, [1, 4, 2, 1, 4, 3, 6, 5, 8, 7, 0xa, 9]);
        assert_eq!(NetHeader::from_bytes(&b), h);
    }

    #[test]
    fn test_parse_tx_header_and_frame_split_across_descriptors() {
        let mem = memory();
        let frame: Vec<u8> = (0..100u8).collect();
        put_frame(&mem, 0x10000, NetHeader::default(), &frame);
        // Header split 5 + 7, frame split over the second and a third descriptor.
        mem.write_slice(&[0u8; 5], GuestAddress(0x20000)).unwrap();
        let mut bytes = NetHeader::default().to_bytes().to_vec();
        bytes.extend_from_slice(&frame);
        mem.write_slice(&bytes[..5], GuestAddress(0x20000)).unwrap();
        mem.write_slice(&bytes[5..50], GuestAddress(0x30000))
            .unwrap();
        mem.write_slice(&bytes[50..], GuestAddress(0x40000))
            .unwrap();
        let b = buffers(
            &mem,
            &[
                (0x20000, 5, false),
                (0x30000, 45, false),
                (0x40000, (bytes.len() - 50) as u32, false),
            ],
        )
        .unwrap();
        let mut out = Vec::new();
        assert_eq!(parse_tx(&mem, &b, &mut out), Ok(NetHeader::default()));
        assert_eq!(out, frame);
    }

    #[test]
    fn test_parse_tx_refuses_bad_chains() {
        let mem = memory();
        let mut out = Vec::new();
        put_frame(&mem, 0x10000, NetHeader::default(), &[0xaa; 64]);
        // Writable buffer in a transmit chain.
        let b = buffers(&mem, &[(0x10000, 76, false), (0x20000, 16, true)]).unwrap();
        assert_eq!(parse_tx(&mem, &b, &mut out), Err(TxError::WritableBuffer));
        // Shorter than the header.
        let b = buffers(&mem, &[(0x10000, 11, false)]).unwrap();
        assert_eq!(parse_tx(&mem, &b, &mut out), Err(TxError::ShortHeader(11)));
        // Header only, or a frame shorter than an ethernet header.
        let b = buffers(&mem, &[(0x10000, 12, false)]).unwrap();
        assert_eq!(parse_tx(&mem, &b, &mut out), Err(TxError::Runt(0)));
        let b = buffers(&mem, &[(0x10000, 25, false)]).unwrap();
        assert_eq!(parse_tx(&mem, &b, &mut out), Err(TxError::Runt(13)));
        // One byte over the maximum, across two descriptors.
        let b = buffers(&mem, &[(0x100000, 65536, false), (0x200000, 27, false)]).unwrap();
        assert_eq!(parse_tx(&mem, &b, &mut out), Err(TxError::Oversized(65563)));
        // Exactly the maximum is fine.
        let b = buffers(&mem, &[(0x100000, 65536, false), (0x200000, 26, false)]).unwrap();
        mem.write_slice(&[0u8; HDR_LEN], GuestAddress(0x100000))
            .unwrap();
        assert!(parse_tx(&mem, &b, &mut out).is_ok());
        assert_eq!(out.len(), MAX_FRAME_LEN);
        // Offloads that were not negotiated.
        for (flags, gso_type) in [(HDR_F_NEEDS_CSUM, 0), (0, 1), (2, 0)] {
            let h = NetHeader {
                flags,
                gso_type,
                ..NetHeader::default()
            };
            put_frame(&mem, 0x10000, h, &[0xaa; 64]);
            let b = buffers(&mem, &[(0x10000, 76, false)]).unwrap();
            assert_eq!(
                parse_tx(&mem, &b, &mut out),
                Err(TxError::BadHeader { flags, gso_type })
            );
        }
    }

    #[test]
    fn test_rx_chains_needed() {
        assert_eq!(rx_chains_needed(&[1526], 1514), Some(1));
        assert_eq!(rx_chains_needed(&[1525], 1514), None);
        assert_eq!(rx_chains_needed(&[4096, 4096], 5000), Some(2));
        assert_eq!(rx_chains_needed(&[4096, 4096, 4096], 4084), Some(1));
        assert_eq!(rx_chains_needed(&[], 60), None);
    }

    #[test]
    fn test_write_rx_merges_buffers() {
        let mem = memory();
        let frame: Vec<u8> = (0..5000u32).map(|i| (i * 13) as u8).collect();
        let a = [
            Segment {
                addr: GuestAddress(0x10000),
                len: 1000,
                writable: true,
            },
            Segment {
                addr: GuestAddress(0x20000),
                len: 3096,
                writable: true,
            },
        ];
        let b = [Segment {
            addr: GuestAddress(0x30000),
            len: 4096,
            writable: true,
        }];
        let lens = write_rx(&mem, &[&a, &b], &frame).unwrap();
        assert_eq!(lens, vec![4096, (5012 - 4096) as u32]);
        let mut hdr = [0u8; HDR_LEN];
        mem.read_slice(&mut hdr, GuestAddress(0x10000)).unwrap();
        assert_eq!(NetHeader::from_bytes(&hdr).num_buffers, 2);
        let mut out = vec![0u8; 5000];
        gather(&mem, &a, HDR_LEN as u64, &mut out[..4084]).unwrap();
        gather(&mem, &b, 0, &mut out[4084..]).unwrap();
        assert_eq!(out, frame);
        // Not enough room.
        assert!(write_rx(&mem, &[&b], &frame).is_err());
    }
}
