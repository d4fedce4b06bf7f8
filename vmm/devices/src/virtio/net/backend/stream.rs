//! A stream of length-prefixed frames, as passt (and QEMU's `-netdev stream`) speak it: each
//! frame is a 4-byte big-endian length followed by the Ethernet frame. Used for passt's unix
//! socket and, in tests, one end of a socketpair.

use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;

use super::{BackendError, NetBackend, RecvStatus, SendStatus};
use crate::virtio::net::defs::{MAX_FRAME_LEN, MIN_FRAME_LEN};

/// Bytes of the length prefix.
const LEN_PREFIX: usize = 4;
/// Size of the input buffer: one largest frame and its prefix, plus room to read ahead.
const IN_BUF: usize = 2 * (MAX_FRAME_LEN + LEN_PREFIX);
/// Output queued beyond which [`StreamBackend::send`] answers [`SendStatus::Full`].
const OUT_LIMIT: usize = 256 * 1024;

/// A framed unix stream.
pub struct StreamBackend {
    kind: &'static str,
    stream: UnixStream,
    /// Input: bytes `[in_start, in_end)` of `inbuf` are read but not yet consumed.
    inbuf: Vec<u8>,
    in_start: usize,
    in_end: usize,
    /// Bytes of a refused frame still to skip.
    skip: u64,
    /// Output: bytes `[out_start..]` of `outbuf` wait for the stream.
    outbuf: Vec<u8>,
    out_start: usize,
}

impl StreamBackend {
    /// Connects to passt's unix socket at `path`.
    pub fn connect_passt(path: &Path) -> std::io::Result<Self> {
        Self::new("passt", UnixStream::connect(path)?)
    }

    /// Uses one end of a connected stream (a socketpair in tests).
    pub fn new(kind: &'static str, stream: UnixStream) -> std::io::Result<Self> {
        stream.set_nonblocking(true)?;
        Ok(StreamBackend {
            kind,
            stream,
            inbuf: vec![0; IN_BUF],
            in_start: 0,
            in_end: 0,
            skip: 0,
            outbuf: Vec::new(),
            out_start: 0,
        })
    }

    /// A connected pair: the backend and the peer's end (blocking), for tests.
    pub fn pair() -> std::io::Result<(Self, UnixStream)> {
        let (a, b) = UnixStream::pair()?;
        Ok((Self::new("socketpair", a)?, b))
    }

    /// Reads more input; `Ok(false)` when nothing is available now.
    fn fill(&mut self) -> Result<bool, BackendError> {
        if self.in_start == self.in_end {
            self.in_start = 0;
            self.in_end = 0;
        } else if self.in_end == self.inbuf.len() {
            self.inbuf.copy_within(self.in_start..self.in_end, 0);
            self.in_end -= self.in_start;
            self.in_start = 0;
        }
        loop {
            match self.stream.read(&mut self.inbuf[self.in_end..]) {
                Ok(0) => return Err(BackendError::Closed),
                Ok(n) => {
                    self.in_end += n;
                    return Ok(true);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(BackendError::Io(e)),
            }
        }
    }

    fn buffered(&self) -> usize {
        self.in_end - self.in_start
    }
}

impl NetBackend for StreamBackend {
    fn kind(&self) -> &'static str {
        self.kind
    }

    fn raw_fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }

    fn recv(&mut self, frame: &mut Vec<u8>) -> Result<RecvStatus, BackendError> {
        loop {
            if self.skip > 0 {
                let n = (self.buffered() as u64).min(self.skip);
                self.in_start += n as usize;
                self.skip -= n;
                if self.skip > 0 && !self.fill()? {
                    return Ok(RecvStatus::Empty);
                }
                continue;
            }
            if self.buffered() >= LEN_PREFIX {
                let p = &self.inbuf[self.in_start..self.in_start + LEN_PREFIX];
                let len = u32::from_be_bytes([p[0], p[1], p[2], p[3]]) as usize;
                if !(MIN_FRAME_LEN..=MAX_FRAME_LEN).contains(&len) {
                    self.in_start += LEN_PREFIX;
                    self.skip = len as u64;
                    return Ok(if len > MAX_FRAME_LEN {
                        RecvStatus::Oversized(len as u64)
                    } else {
                        RecvStatus::Runt(len as u64)
                    });
                }
                if self.buffered() >= LEN_PREFIX + len {
                    let start = self.in_start + LEN_PREFIX;
                    frame.clear();
                    frame.extend_from_slice(&self.inbuf[start..start + len]);
                    self.in_start = start + len;
                    return Ok(RecvStatus::Frame);
                }
            }
            if !self.fill()? {
                return Ok(RecvStatus::Empty);
            }
        }
    }

    fn send(&mut self, frame: &[u8]) -> Result<SendStatus, BackendError> {
        if self.outbuf.len() - self.out_start >= OUT_LIMIT {
            return Ok(SendStatus::Full);
        }
        self.outbuf
            .extend_from_slice(&(frame.len() as u32).to_be_bytes());
        self.outbuf.extend_from_slice(frame);
        self.flush()?;
        Ok(SendStatus::Sent)
    }

    fn has_pending_output(&self) -> bool {
        self.out_start < self.outbuf.len()
    }

    fn flush(&mut self) -> Result<(), BackendError> {
        while self.out_start < self.outbuf.len() {
            match self.stream.write(&self.outbuf[self.out_start..]) {
                Ok(0) => return Err(BackendError::Closed),
                Ok(n) => self.out_start += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == ErrorKind::BrokenPipe => return Err(BackendError::Closed),
                Err(e) => return Err(BackendError::Io(e)),
            }
        }
        if self.out_start == self.outbuf.len() {
            self.outbuf.clear();
            self.out_start = 0;
        } else if self.out_start > OUT_LIMIT {
            self.outbuf.drain(..self.out_start);
            self.out_start = 0;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(frame: &[u8]) -> Vec<u8> {
        let mut v = (frame.len() as u32).to_be_bytes().to_vec();
        v.extend_from_slice(frame);
        v
    }

    #[test]
    fn test_stream_frames_split_and_coalesced() {
        let (mut b, mut peer) = StreamBackend::pair().unwrap();
        let mut frame = Vec::new();
        assert_eq!(b.recv(&mut frame).unwrap(), RecvStatus::Empty);
        let f1 = vec![1u8; 60];
        let f2: Vec<u8> = (0..1500u32).map(|i| i as u8).collect();
        let mut bytes = framed(&f1);
        bytes.extend(framed(&f2));
        // The first frame and part of the second.
        peer.write_all(&bytes[..100]).unwrap();
        assert_eq!(b.recv(&mut frame).unwrap(), RecvStatus::Frame);
        assert_eq!(frame, f1);
        assert_eq!(b.recv(&mut frame).unwrap(), RecvStatus::Empty);
        peer.write_all(&bytes[100..]).unwrap();
        assert_eq!(b.recv(&mut frame).unwrap(), RecvStatus::Frame);
        assert_eq!(frame, f2);
        assert_eq!(b.recv(&mut frame).unwrap(), RecvStatus::Empty);
    }

    #[test]
    fn test_stream_skips_oversized_and_runt_frames() {
        let (mut b, mut peer) = StreamBackend::pair().unwrap();
        let mut frame = Vec::new();
        let big = vec![7u8; MAX_FRAME_LEN + 1];
        let mut bytes = framed(&big);
        bytes.extend(framed(&[1, 2, 3]));
        bytes.extend(framed(&[9u8; 64]));
        let writer = std::thread::spawn(move || peer.write_all(&bytes).map(|_| peer));
        let mut seen = Vec::new();
        while seen.len() < 3 {
            match b.recv(&mut frame).unwrap() {
                RecvStatus::Empty => std::thread::sleep(std::time::Duration::from_millis(1)),
                s => seen.push((s, frame.clone())),
            }
        }
        let _peer = writer.join().unwrap().unwrap();
        assert_eq!(seen[0].0, RecvStatus::Oversized(MAX_FRAME_LEN as u64 + 1));
        assert_eq!(seen[1].0, RecvStatus::Runt(3));
        assert_eq!(seen[2], (RecvStatus::Frame, vec![9u8; 64]));
    }

    #[test]
    fn test_stream_send_backpressure_and_close() {
        let (mut b, mut peer) = StreamBackend::pair().unwrap();
        let frame = vec![5u8; 60000];
        let mut sent = 0;
        loop {
            match b.send(&frame).unwrap() {
                SendStatus::Sent => sent += 1,
                SendStatus::Full => break,
                SendStatus::Dropped => unreachable!(),
            }
            assert!(sent < 1000, "no backpressure");
        }
        assert!(b.has_pending_output());
        // The peer drains everything; the backend flushes the rest.
        let expected = sent * (frame.len() + 4);
        let reader = std::thread::spawn(move || {
            let mut buf = vec![0u8; expected];
            peer.read_exact(&mut buf).unwrap();
            buf
        });
        while b.has_pending_output() {
            b.flush().unwrap();
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let got = reader.join().unwrap();
        assert_eq!(&got[..4], &60000u32.to_be_bytes());
        assert!(got[4..60004].iter().all(|&x| x == 5));
        // The peer is gone.
        let mut f = Vec::new();
        assert!(matches!(b.recv(&mut f), Err(BackendError::Closed)));
    }
}
