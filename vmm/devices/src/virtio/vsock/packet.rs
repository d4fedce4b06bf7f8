//! The vsock packet header (`struct virtio_vsock_hdr`, virtio 1.2, 5.10.6) and turning tx
//! chains into packets.

use super::defs::{HEADER_LEN, MAX_PKT_PAYLOAD};
use crate::virtio::chain::{gather, Buffers};
use crate::GuestMemory;

/// The packet header, host byte order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PacketHeader {
    /// Source CID.
    pub src_cid: u64,
    /// Destination CID.
    pub dst_cid: u64,
    /// Source port.
    pub src_port: u32,
    /// Destination port.
    pub dst_port: u32,
    /// Payload length.
    pub len: u32,
    /// Socket type.
    pub type_: u16,
    /// Operation.
    pub op: u16,
    /// Operation flags (shutdown flags).
    pub flags: u32,
    /// Sender's receive buffer size.
    pub buf_alloc: u32,
    /// Bytes the sender has consumed.
    pub fwd_cnt: u32,
}

impl PacketHeader {
    /// Decodes 44 little-endian bytes.
    pub fn from_bytes(b: &[u8; HEADER_LEN]) -> Self {
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap_or_default());
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap_or_default());
        let u16_at = |o: usize| u16::from_le_bytes(b[o..o + 2].try_into().unwrap_or_default());
        PacketHeader {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            type_: u16_at(28),
            op: u16_at(30),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        }
    }

    /// Encodes as 44 little-endian bytes.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }
}

/// Why a tx chain is not a packet.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PacketError {
    /// Fewer than 44 readable bytes.
    #[error("packet header too short")]
    HeaderTooShort,
    /// A tx packet with device-writable buffers.
    #[error("tx packet with writable buffers")]
    WrongDirection,
    /// `len` larger than the buffers or than the device's limit.
    #[error("bad payload length {0}")]
    BadLength(u32),
    /// Guest memory could not be read.
    #[error("cannot read the packet from guest memory")]
    Memory,
}

/// Reads a guest-to-host packet (header and payload) from the buffers of a tx chain.
pub fn parse_tx(
    mem: &GuestMemory,
    buffers: &Buffers,
) -> Result<(PacketHeader, Vec<u8>), PacketError> {
    if !buffers.writable.is_empty() {
        return Err(PacketError::WrongDirection);
    }
    let readable = buffers.readable_len();
    if readable < HEADER_LEN as u64 {
        return Err(PacketError::HeaderTooShort);
    }
    let mut raw = [0u8; HEADER_LEN];
    gather(mem, &buffers.readable, 0, &mut raw).map_err(|_| PacketError::Memory)?;
    let header = PacketHeader::from_bytes(&raw);
    if header.len > MAX_PKT_PAYLOAD || u64::from(header.len) > readable - HEADER_LEN as u64 {
        return Err(PacketError::BadLength(header.len));
    }
    let mut payload = vec![0u8; header.len as usize];
    gather(mem, &buffers.readable, HEADER_LEN as u64, &mut payload)
        .map_err(|_| PacketError::Memory)?;
    Ok((header, payload))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::chain::test_utils::memory;
    use crate::virtio::chain::Segment;
    use vm_memory::{Bytes, GuestAddress};

    fn header() -> PacketHeader {
        PacketHeader {
            src_cid: 3,
            dst_cid: 2,
            src_port: 1000,
            dst_port: 52,
            len: 5,
            type_: 1,
            op: 5,
            flags: 0,
            buf_alloc: 4096,
            fwd_cnt: 7,
        }
    }

    #[test]
    fn test_header_roundtrip() {
        let h = header();
        assert_eq!(PacketHeader::from_bytes(&h.to_bytes()), h);
    }

    #[test]
    fn test_parse_tx_header_and_split_payload() {
        let mem = memory();
        mem.write_slice(&header().to_bytes(), GuestAddress(0x10000))
            .unwrap();
        mem.write_slice(b"hel", GuestAddress(0x10000 + 44)).unwrap();
        mem.write_slice(b"lo", GuestAddress(0x20000)).unwrap();
        let b = Buffers {
            readable: vec![
                Segment {
                    addr: GuestAddress(0x10000),
                    len: 47,
                    writable: false,
                },
                Segment {
                    addr: GuestAddress(0x20000),
                    len: 2,
                    writable: false,
                },
            ],
            writable: vec![],
        };
        let (h, payload) = parse_tx(&mem, &b).unwrap();
        assert_eq!(h, header());
        assert_eq!(payload, b"hello");
    }

    #[test]
    fn test_parse_tx_rejects_bad_packets() {
        let mem = memory();
        let seg = |addr, len, writable| Segment {
            addr: GuestAddress(addr),
            len,
            writable,
        };
        let short = Buffers {
            readable: vec![seg(0x10000, 20, false)],
            writable: vec![],
        };
        assert_eq!(parse_tx(&mem, &short), Err(PacketError::HeaderTooShort));
        let writable = Buffers {
            readable: vec![seg(0x10000, 44, false)],
            writable: vec![seg(0x20000, 4, true)],
        };
        assert_eq!(parse_tx(&mem, &writable), Err(PacketError::WrongDirection));
        // len says 5 but only 2 payload bytes present.
        mem.write_slice(&header().to_bytes(), GuestAddress(0x10000))
            .unwrap();
        let truncated = Buffers {
            readable: vec![seg(0x10000, 46, false)],
            writable: vec![],
        };
        assert_eq!(parse_tx(&mem, &truncated), Err(PacketError::BadLength(5)));
        let mut huge = header();
        huge.len = u32::MAX;
        mem.write_slice(&huge.to_bytes(), GuestAddress(0x10000))
            .unwrap();
        let b = Buffers {
            readable: vec![seg(0x10000, 100, false)],
            writable: vec![],
        };
        assert_eq!(parse_tx(&mem, &b), Err(PacketError::BadLength(u32::MAX)));
    }
}
