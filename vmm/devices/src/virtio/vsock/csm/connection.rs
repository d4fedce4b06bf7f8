//! One vsock stream connection between a guest socket and a host unix stream, with the
//! virtio-vsock credit accounting (virtio 1.2, 5.10.6.3).

use std::collections::VecDeque;
use std::io::{self, Write};
use std::num::Wrapping;
use std::os::unix::net::UnixStream;

use super::super::defs::CONN_BUF_ALLOC;

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnState {
    /// A host process connected and named a guest port; an OP_REQUEST went to the guest, its
    /// OP_RESPONSE (or OP_RST) has not arrived. No data flows yet.
    LocalInit,
    /// Both sides accepted the connection: data flows both ways, subject to credit and to the
    /// shutdown flags each side sent.
    Established,
    /// The host stream reached end of file: the guest was sent OP_SHUTDOWN (both directions)
    /// and the connection waits for the guest's OP_RST or OP_SHUTDOWN before it is removed.
    /// Guest data still in flight is written to the host while the socket accepts it.
    LocalClosed,
}

/// Why guest data could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum TxError {
    /// The guest sent more than the buffer space it was offered.
    #[error("guest exceeded its credit")]
    CreditExceeded,
    /// Writing to the host stream failed.
    #[error("host stream write failed")]
    Io(#[source] io::Error),
}

/// One connection.
#[derive(Debug)]
pub struct Connection {
    /// The host end.
    pub stream: UnixStream,
    /// Port on the host side (the allocated `host_port` for host-initiated connections, the
    /// guest's destination port for guest-initiated ones).
    pub local_port: u32,
    /// Port of the guest socket.
    pub peer_port: u32,
    /// State.
    pub state: ConnState,
    /// The guest will send no more data.
    pub peer_shut_send: bool,
    /// The guest will receive no more data.
    pub peer_shut_recv: bool,
    /// Queued in the muxer's list of connections with host data to read.
    pub rx_pending: bool,
    /// Guest-to-host bytes not yet accepted by the host stream.
    tx_buf: VecDeque<u8>,
    /// How many bytes at the front of `tx_buf` the VMM wrote itself (the `OK <port>` line):
    /// they are not guest data and do not count in `fwd_cnt`.
    control_bytes: usize,
    /// Bytes forwarded to the host (our `fwd_cnt`).
    fwd_cnt: Wrapping<u32>,
    /// `fwd_cnt` as last told to the guest.
    last_fwd_cnt_sent: Wrapping<u32>,
    /// Bytes sent to the guest.
    rx_cnt: Wrapping<u32>,
    /// The guest's receive buffer size.
    peer_buf_alloc: u32,
    /// Bytes the guest has consumed.
    peer_fwd_cnt: Wrapping<u32>,
}

impl Connection {
    /// A connection in `state` over `stream` (which must be non-blocking).
    pub fn new(stream: UnixStream, local_port: u32, peer_port: u32, state: ConnState) -> Self {
        Connection {
            stream,
            local_port,
            peer_port,
            state,
            peer_shut_send: false,
            peer_shut_recv: false,
            rx_pending: false,
            tx_buf: VecDeque::new(),
            control_bytes: 0,
            fwd_cnt: Wrapping(0),
            last_fwd_cnt_sent: Wrapping(0),
            rx_cnt: Wrapping(0),
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
        }
    }

    /// Records the credit fields of a packet from the guest.
    pub fn update_peer_credit(&mut self, buf_alloc: u32, fwd_cnt: u32) {
        self.peer_buf_alloc = buf_alloc;
        self.peer_fwd_cnt = Wrapping(fwd_cnt);
    }

    /// Bytes the guest can still take.
    pub fn peer_credit(&self) -> u32 {
        let in_flight = (self.rx_cnt - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Counts `n` bytes sent to the guest.
    pub fn record_rx(&mut self, n: u32) {
        self.rx_cnt += Wrapping(n);
    }

    /// Our `fwd_cnt`, remembered as told to the guest.
    pub fn fwd_cnt_for_header(&mut self) -> u32 {
        self.last_fwd_cnt_sent = self.fwd_cnt;
        self.fwd_cnt.0
    }

    /// Whether the guest should hear about freed buffer space now.
    pub fn needs_credit_update(&self) -> bool {
        (self.fwd_cnt - self.last_fwd_cnt_sent).0 >= CONN_BUF_ALLOC / 4
    }

    /// Whether guest data waits for the host stream.
    pub fn has_pending_tx(&self) -> bool {
        !self.tx_buf.is_empty()
    }

    /// Queues `bytes` for the host before any guest data (the `OK <port>` line).
    pub fn prepend_control(&mut self, bytes: &[u8]) {
        for b in bytes.iter().rev() {
            self.tx_buf.push_front(*b);
        }
        self.control_bytes += bytes.len();
    }

    /// Takes guest data for the host: written at once where the stream accepts it, buffered
    /// otherwise (up to the credit the guest was given).
    pub fn send(&mut self, data: &[u8]) -> Result<(), TxError> {
        let mut rest = data;
        if self.tx_buf.is_empty() {
            match self.stream.write(rest) {
                Ok(n) => {
                    self.fwd_cnt += Wrapping(n as u32);
                    rest = &rest[n..];
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(TxError::Io(e)),
            }
        }
        if self.tx_buf.len() + rest.len() > CONN_BUF_ALLOC as usize + 64 {
            return Err(TxError::CreditExceeded);
        }
        self.tx_buf.extend(rest);
        Ok(())
    }

    /// Writes buffered guest data to the host stream, as much as it takes.
    pub fn flush(&mut self) -> io::Result<()> {
        while !self.tx_buf.is_empty() {
            let (front, _) = self.tx_buf.as_slices();
            match self.stream.write(front) {
                Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero)),
                Ok(n) => {
                    self.tx_buf.drain(..n);
                    let control = n.min(self.control_bytes);
                    self.control_bytes -= control;
                    self.fwd_cnt += Wrapping((n - control) as u32);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Whether the host stream should be polled for reading.
    pub fn wants_read(&self) -> bool {
        self.state == ConnState::Established
            && !self.rx_pending
            && !self.peer_shut_recv
            && self.peer_credit() > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn pair() -> (Connection, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        (Connection::new(a, 1, 2, ConnState::Established), b)
    }

    #[test]
    fn test_credit_accounting() {
        let (mut c, _peer) = pair();
        assert_eq!(c.peer_credit(), 0);
        assert!(!c.wants_read());
        c.update_peer_credit(1000, 0);
        assert!(c.wants_read());
        c.record_rx(600);
        assert_eq!(c.peer_credit(), 400);
        c.update_peer_credit(1000, 500);
        assert_eq!(c.peer_credit(), 900);
        c.record_rx(900);
        assert_eq!(c.peer_credit(), 0);
    }

    #[test]
    fn test_send_writes_and_counts() {
        let (mut c, mut peer) = pair();
        c.prepend_control(b"OK 7\n");
        c.flush().unwrap();
        c.send(b"data").unwrap();
        let mut buf = [0u8; 9];
        peer.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"OK 7\ndata");
        // Only guest bytes count: the guest's credit would underflow if the VMM's own
        // `OK` line were counted as forwarded guest data.
        assert_eq!(c.fwd_cnt_for_header(), 4);
    }

    #[test]
    fn test_send_buffers_when_host_is_slow_and_refuses_excess() {
        let (mut c, mut peer) = pair();
        let chunk = vec![7u8; 64 * 1024];
        // Fill the socket buffer and then the connection buffer.
        let mut sent = 0usize;
        let err = loop {
            match c.send(&chunk) {
                Ok(()) => sent += chunk.len(),
                Err(e) => break e,
            }
            assert!(sent < 64 << 20, "never refused");
        };
        assert!(matches!(err, TxError::CreditExceeded));
        assert!(c.has_pending_tx());
        // Drain the host side and flush.
        peer.set_nonblocking(true).unwrap();
        let mut sink = vec![0u8; 1 << 20];
        while c.has_pending_tx() {
            let _ = peer.read(&mut sink);
            c.flush().unwrap();
        }
    }
}
