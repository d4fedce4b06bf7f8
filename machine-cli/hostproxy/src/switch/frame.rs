//! The framing of a port: a 4-byte big-endian length, then that many bytes of one
//! Ethernet frame (QEMU's `net_stream_receive` writes `htonl(size)` before each frame;
//! passt and rmachine-vmm's stream backend do the same).

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt};

use super::mac_table::MacAddr;

/// Bytes of the length before each frame.
pub const LEN_PREFIX: usize = 4;

/// The shortest frame accepted: an Ethernet header (two addresses and the EtherType).
pub const MIN_FRAME_LEN: usize = 14;

/// A received frame as it is sent on: the length prefix, then the Ethernet frame. Shared
/// between the queues of every port it is flooded to.
pub type Frame = Arc<Vec<u8>>;

/// Why a port's input ended.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame length {len} is outside {min}..={max}")]
    BadLength { len: u32, min: usize, max: usize },
    #[error("the connection closed in the middle of a frame")]
    Truncated,
    #[error("cannot read from the port")]
    Read(#[source] std::io::Error),
}

/// Reads one frame; `Ok(None)` when the peer closed between frames.
pub async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    max_frame_len: usize,
) -> Result<Option<Frame>, FrameError> {
    let mut prefix = [0u8; LEN_PREFIX];
    // The first byte tells a clean close (EOF between frames) from a cut one.
    match reader.read(&mut prefix[..1]).await {
        Ok(0) => return Ok(None),
        Ok(_) => {}
        Err(e) => return Err(FrameError::Read(e)),
    }
    read_exact(reader, &mut prefix[1..]).await?;
    let len = u32::from_be_bytes(prefix);
    let frame_len = len as usize;
    if !(MIN_FRAME_LEN..=max_frame_len).contains(&frame_len) {
        return Err(FrameError::BadLength {
            len,
            min: MIN_FRAME_LEN,
            max: max_frame_len,
        });
    }
    let mut buf = vec![0u8; LEN_PREFIX + frame_len];
    buf[..LEN_PREFIX].copy_from_slice(&prefix);
    read_exact(reader, &mut buf[LEN_PREFIX..]).await?;
    Ok(Some(Arc::new(buf)))
}

async fn read_exact<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut [u8],
) -> Result<(), FrameError> {
    match reader.read_exact(buf).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(FrameError::Truncated),
        Err(e) => Err(FrameError::Read(e)),
    }
}

/// Frames `payload` (an Ethernet frame) with its length, as a port sends it.
pub fn encode(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(LEN_PREFIX + payload.len());
    // Callers pass frames no longer than a switch accepts, which fit 32 bits.
    out.extend_from_slice(
        &u32::try_from(payload.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    out.extend_from_slice(payload);
    out
}

/// The destination and source addresses of a framed frame (length prefix included). A
/// [`read_frame`] result always has them.
pub fn addresses(frame: &[u8]) -> Option<(MacAddr, MacAddr)> {
    let dst: [u8; 6] = frame.get(LEN_PREFIX..LEN_PREFIX + 6)?.try_into().ok()?;
    let src: [u8; 6] = frame
        .get(LEN_PREFIX + 6..LEN_PREFIX + 12)?
        .try_into()
        .ok()?;
    Some((MacAddr(dst), MacAddr(src)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn test_read_frame_accepts_bounds_and_refuses_garbage_lengths() {
        let max = 100;
        let mut input = Vec::new();
        input.extend(encode(&[1u8; MIN_FRAME_LEN]));
        input.extend(encode(&[2u8; 100]));
        let mut reader = input.as_slice();
        assert_eq!(
            read_frame(&mut reader, max).await.unwrap().unwrap().len(),
            LEN_PREFIX + MIN_FRAME_LEN
        );
        assert_eq!(
            read_frame(&mut reader, max).await.unwrap().unwrap()[LEN_PREFIX..],
            [2u8; 100]
        );
        assert!(read_frame(&mut reader, max).await.unwrap().is_none());
        for len in [0u32, 13, 101, u32::MAX] {
            let bytes = len.to_be_bytes();
            let mut reader = &bytes[..];
            match read_frame(&mut reader, max).await {
                Err(FrameError::BadLength { len: got, .. }) => assert_eq!(got, len),
                other => panic!("length {len}: {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn test_read_frame_tells_a_cut_frame_from_a_clean_close() {
        let mut cut = encode(&[3u8; 20]);
        cut.truncate(10);
        assert!(matches!(
            read_frame(&mut cut.as_slice(), 100).await,
            Err(FrameError::Truncated)
        ));
        assert!(matches!(
            read_frame(&mut &[0u8, 0][..], 100).await,
            Err(FrameError::Truncated)
        ));
        assert!(read_frame(&mut &[][..], 100).await.unwrap().is_none());
    }

    #[test]
    fn test_addresses_of_a_frame() {
        let mut payload = vec![0xff; 6];
        payload.extend([0x52, 0x54, 0, 0, 0, 1]);
        payload.extend([0x08, 0x06]);
        let (dst, src) = addresses(&encode(&payload)).unwrap();
        assert!(dst.is_multicast());
        assert_eq!(src, MacAddr([0x52, 0x54, 0, 0, 0, 1]));
        assert_eq!(addresses(&[0u8; 10]), None);
    }
}
