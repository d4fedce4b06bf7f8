//! A TAP device opened with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR` and a 12-byte virtio header
//! (`TUNSETVNETHDRSZ`). Opening it takes ioctls, so the VMM does that and hands the descriptor
//! here; this side only reads and writes whole frames, one per `readv`/`writev`.
//!
//! No offload is enabled on the TAP (`TUNSETOFFLOAD` 0), so the kernel hands over frames with
//! complete checksums and no GSO: the header it prepends is dropped and the one written in
//! front of each frame is all zeroes.

use std::fs::File;
use std::io::{ErrorKind, IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsRawFd, RawFd};

use super::{BackendError, NetBackend, RecvStatus, SendStatus};
use crate::virtio::net::defs::{HDR_LEN, MAX_FRAME_LEN, MIN_FRAME_LEN};

/// A TAP device.
pub struct TapBackend {
    tap: File,
    name: String,
}

impl TapBackend {
    /// Uses `tap`, an opened and configured TAP descriptor (see the module documentation),
    /// named `name`. Makes it non-blocking.
    pub fn new(tap: File, name: String) -> std::io::Result<Self> {
        let fd = tap.as_raw_fd();
        let flags = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFL)?;
        let flags = nix::fcntl::OFlag::from_bits_retain(flags) | nix::fcntl::OFlag::O_NONBLOCK;
        nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFL(flags))?;
        Ok(TapBackend { tap, name })
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl NetBackend for TapBackend {
    fn kind(&self) -> &'static str {
        "tap"
    }

    fn raw_fd(&self) -> RawFd {
        self.tap.as_raw_fd()
    }

    fn recv(&mut self, frame: &mut Vec<u8>) -> Result<RecvStatus, BackendError> {
        let mut hdr = [0u8; HDR_LEN];
        frame.resize(MAX_FRAME_LEN, 0);
        loop {
            let mut iov = [IoSliceMut::new(&mut hdr), IoSliceMut::new(frame)];
            match self.tap.read_vectored(&mut iov) {
                Ok(n) if n < HDR_LEN + MIN_FRAME_LEN => {
                    frame.clear();
                    return Ok(RecvStatus::Runt(n.saturating_sub(HDR_LEN) as u64));
                }
                Ok(n) => {
                    frame.truncate(n - HDR_LEN);
                    return Ok(RecvStatus::Frame);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    frame.clear();
                    return Ok(RecvStatus::Empty);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    frame.clear();
                    return Err(BackendError::Io(e));
                }
            }
        }
    }

    fn send(&mut self, frame: &[u8]) -> Result<SendStatus, BackendError> {
        let hdr = [0u8; HDR_LEN];
        loop {
            let iov = [IoSlice::new(&hdr), IoSlice::new(frame)];
            match self.tap.write_vectored(&iov) {
                Ok(_) => return Ok(SendStatus::Sent),
                // The interface is down or its queue is full: the frame is lost, as on a wire.
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(SendStatus::Dropped),
                Err(e) if e.raw_os_error() == Some(libc::EIO) => return Ok(SendStatus::Dropped),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(BackendError::Io(e)),
            }
        }
    }
}
