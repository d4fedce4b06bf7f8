//! The muxer: routes guest packets to host unix streams and host data to guest packets.
//!
//! It owns the listening socket, the host streams still sending their `CONNECT` line, and the
//! connections. It does not touch queues or epoll: it consumes parsed guest packets
//! ([`VsockMuxer::send_to_host`]), produces packets for the guest
//! ([`VsockMuxer::next_rx_packet`]) and lists the epoll changes it needs ([`FdOp`]), which the
//! device applies.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};
use vmm_sys_util::epoll::EventSet;

use super::super::csm::{ConnState, Connection};
use super::super::defs::*;
use super::super::metrics::VsockMetrics;
use super::super::packet::PacketHeader;
use super::super::VsockError;
use crate::warn_guest;

/// Event token of the listening socket.
pub const LISTENER_TOKEN: u32 = 3;
/// Event tokens of host streams are their fd plus this.
pub const TOKEN_BASE: u32 = 16;
/// Longest accepted `CONNECT <port>\n` line.
const MAX_CONNECT_LINE: usize = 32;
/// First host port handed out to host-initiated connections.
const FIRST_LOCAL_PORT: u32 = 1 << 30;
/// Control packets held for the guest (answers: RST, RESPONSE, CREDIT_UPDATE, ...) beyond which
/// the device takes no more tx packets, any of which may add one, until the guest posts receive
/// buffers. Without it a guest that sends without receiving grows the queue without bound.
pub const MAX_PENDING_CONTROL: usize = 128;

/// An epoll change for a host fd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FdOp {
    /// Start watching `fd` for `events`.
    Add(RawFd, u32, EventSet),
    /// Watch `fd` for `events` instead.
    Modify(RawFd, u32, EventSet),
    /// Stop watching `fd`.
    Remove(RawFd, u32),
}

/// (local_port, peer_port).
type ConnKey = (u32, u32);

/// A host stream that has not finished its `CONNECT` line.
struct PendingHost {
    stream: UnixStream,
    line: Vec<u8>,
}

/// Who owns a registered fd.
#[derive(Debug, Clone, Copy)]
enum FdOwner {
    Pending,
    Conn(ConnKey),
}

/// The muxer.
pub struct VsockMuxer {
    guest_cid: u64,
    uds_path: PathBuf,
    listener: UnixListener,
    conns: HashMap<ConnKey, Connection>,
    /// Current epoll interest of each connection's fd (absent: not registered).
    interest: HashMap<RawFd, EventSet>,
    fds: HashMap<RawFd, FdOwner>,
    pending: HashMap<RawFd, PendingHost>,
    control: VecDeque<PacketHeader>,
    rx_ready: VecDeque<ConnKey>,
    next_local_port: u32,
    ops: Vec<FdOp>,
    graveyard: Vec<UnixStream>,
    metrics: Arc<VsockMetrics>,
}

fn token(fd: RawFd) -> u32 {
    fd as u32 + TOKEN_BASE
}

/// Connects a non-blocking stream to the unix socket at `path`. A service whose accept queue
/// is full refuses at once (`EAGAIN`) instead of blocking the device thread until it accepts:
/// the guest decides how fast connections are requested.
fn connect_nonblocking(path: &str) -> io::Result<UnixStream> {
    let fd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    connect(fd.as_raw_fd(), &UnixAddr::new(path)?)?;
    Ok(UnixStream::from(fd))
}

/// Binds the host socket at `uds_path` (replacing a stale socket file), non-blocking.
pub fn bind_listener(uds_path: &Path) -> Result<UnixListener, VsockError> {
    let _ = std::fs::remove_file(uds_path);
    let listener = UnixListener::bind(uds_path)
        .map_err(|e| VsockError::Bind(uds_path.display().to_string(), e))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| VsockError::Bind(uds_path.display().to_string(), e))?;
    Ok(listener)
}

impl VsockMuxer {
    /// Listens on `uds_path` (replacing a stale socket file).
    pub fn new(
        guest_cid: u64,
        uds_path: &Path,
        metrics: Arc<VsockMetrics>,
    ) -> Result<Self, VsockError> {
        let listener = bind_listener(uds_path)?;
        Ok(Self::with_listener(guest_cid, uds_path, listener, metrics))
    }

    /// Serves `listener`, already bound at `uds_path` (by [`bind_listener`]); guest
    /// connections to the host go to `<uds_path>_<port>`.
    pub fn with_listener(
        guest_cid: u64,
        uds_path: &Path,
        listener: UnixListener,
        metrics: Arc<VsockMetrics>,
    ) -> Self {
        VsockMuxer {
            guest_cid,
            uds_path: uds_path.to_path_buf(),
            listener,
            conns: HashMap::new(),
            interest: HashMap::new(),
            fds: HashMap::new(),
            pending: HashMap::new(),
            control: VecDeque::new(),
            rx_ready: VecDeque::new(),
            next_local_port: FIRST_LOCAL_PORT,
            ops: Vec::new(),
            graveyard: Vec::new(),
            metrics,
        }
    }

    /// The listening socket.
    pub fn listener_fd(&self) -> RawFd {
        self.listener.as_raw_fd()
    }

    /// Epoll changes to apply, in order. Closed streams are dropped after this call.
    pub fn take_ops(&mut self) -> Vec<FdOp> {
        std::mem::take(&mut self.ops)
    }

    /// Drops streams whose fds were removed from epoll.
    pub fn bury(&mut self) {
        self.graveyard.clear();
    }

    /// Whether packets wait for the guest.
    pub fn has_rx(&self) -> bool {
        !self.control.is_empty() || !self.rx_ready.is_empty()
    }

    /// Whether so many control packets wait for the guest that no more tx packets should be
    /// taken ([`MAX_PENDING_CONTROL`]).
    pub fn control_backlogged(&self) -> bool {
        self.control.len() >= MAX_PENDING_CONTROL
    }

    /// Number of live connections.
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Closes everything (device reset).
    pub fn reset(&mut self) {
        let keys: Vec<ConnKey> = self.conns.keys().copied().collect();
        for key in keys {
            self.remove_conn(key);
        }
        let fds: Vec<RawFd> = self.pending.keys().copied().collect();
        for fd in fds {
            self.drop_pending(fd);
        }
        self.control.clear();
        self.rx_ready.clear();
    }

    fn header(&self, local_port: u32, peer_port: u32, op: u16) -> PacketHeader {
        PacketHeader {
            src_cid: VSOCK_HOST_CID,
            dst_cid: self.guest_cid,
            src_port: local_port,
            dst_port: peer_port,
            len: 0,
            type_: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: CONN_BUF_ALLOC,
            fwd_cnt: 0,
        }
    }

    fn push_control(&mut self, key: ConnKey, op: u16, flags: u32) {
        let mut h = self.header(key.0, key.1, op);
        h.flags = flags;
        if let Some(conn) = self.conns.get_mut(&key) {
            h.fwd_cnt = conn.fwd_cnt_for_header();
        }
        if op == OP_RST {
            VsockMetrics::add(&self.metrics.rst_sent, 1);
        }
        self.control.push_back(h);
    }

    /// Recomputes the epoll interest of a connection's stream.
    fn update_interest(&mut self, key: ConnKey) {
        let Some(conn) = self.conns.get(&key) else {
            return;
        };
        let fd = conn.stream.as_raw_fd();
        let mut want = EventSet::empty();
        if conn.wants_read() {
            want |= EventSet::IN;
        }
        if conn.has_pending_tx() {
            want |= EventSet::OUT;
        }
        match (self.interest.get(&fd).copied(), want.is_empty()) {
            (None, true) => {}
            (None, false) => self.ops.push(FdOp::Add(fd, token(fd), want)),
            (Some(_), true) => self.ops.push(FdOp::Remove(fd, token(fd))),
            (Some(cur), false) if cur != want => self.ops.push(FdOp::Modify(fd, token(fd), want)),
            (Some(_), false) => {}
        }
        if want.is_empty() {
            self.interest.remove(&fd);
        } else {
            self.interest.insert(fd, want);
        }
    }

    fn remove_conn(&mut self, key: ConnKey) {
        if let Some(conn) = self.conns.remove(&key) {
            let fd = conn.stream.as_raw_fd();
            if self.interest.remove(&fd).is_some() {
                self.ops.push(FdOp::Remove(fd, token(fd)));
            }
            self.fds.remove(&fd);
            self.graveyard.push(conn.stream);
            VsockMetrics::add(&self.metrics.conns_closed, 1);
        }
    }

    /// Sends RST to the guest and forgets the connection.
    fn kill(&mut self, key: ConnKey) {
        self.push_control(key, OP_RST, 0);
        self.remove_conn(key);
    }

    fn drop_pending(&mut self, fd: RawFd) {
        if let Some(p) = self.pending.remove(&fd) {
            self.ops.push(FdOp::Remove(fd, token(fd)));
            self.fds.remove(&fd);
            self.graveyard.push(p.stream);
        }
    }

    /// Accepts host connections waiting on the listener.
    pub fn accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if stream.set_nonblocking(true).is_err() {
                        continue;
                    }
                    let fd = stream.as_raw_fd();
                    self.ops.push(FdOp::Add(fd, token(fd), EventSet::IN));
                    self.fds.insert(fd, FdOwner::Pending);
                    self.pending.insert(
                        fd,
                        PendingHost {
                            stream,
                            line: Vec::new(),
                        },
                    );
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    tracing::warn!(error = %e, "vsock: accept failed");
                    return;
                }
            }
        }
    }

    /// Handles readiness of a host stream (token from [`FdOp`]).
    pub fn handle_host_event(&mut self, tok: u32, events: EventSet) {
        let fd = tok.wrapping_sub(TOKEN_BASE) as RawFd;
        match self.fds.get(&fd).copied() {
            Some(FdOwner::Pending) => self.read_connect_line(fd),
            Some(FdOwner::Conn(key)) => self.conn_event(key, events),
            None => {}
        }
    }

    fn read_connect_line(&mut self, fd: RawFd) {
        let Some(p) = self.pending.get_mut(&fd) else {
            return;
        };
        // One byte at a time: bytes after the newline belong to the connection.
        let mut byte = [0u8; 1];
        let line = loop {
            match p.stream.read(&mut byte) {
                Ok(0) => break Err("closed before CONNECT"),
                Ok(_) if byte[0] == b'\n' => {
                    break Ok(String::from_utf8_lossy(&p.line).into_owned())
                }
                Ok(_) if p.line.len() >= MAX_CONNECT_LINE => break Err("CONNECT line too long"),
                Ok(_) => p.line.push(byte[0]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => break Err("read error"),
            }
        };
        let port = line.ok().and_then(|l| {
            let mut words = l.trim_end_matches('\r').split_whitespace();
            match (words.next(), words.next(), words.next()) {
                (Some("CONNECT"), Some(port), None) => port.parse::<u32>().ok(),
                _ => None,
            }
        });
        let Some(peer_port) = port else {
            VsockMetrics::add(&self.metrics.host_handshake_failures, 1);
            tracing::warn!("vsock: host connection without a valid CONNECT line");
            self.drop_pending(fd);
            return;
        };
        let Some(p) = self.pending.remove(&fd) else {
            return;
        };
        // Stop watching until the guest answers.
        self.ops.push(FdOp::Remove(fd, token(fd)));
        let local_port = self.allocate_local_port(peer_port);
        let key = (local_port, peer_port);
        self.fds.insert(fd, FdOwner::Conn(key));
        self.conns.insert(
            key,
            Connection::new(p.stream, local_port, peer_port, ConnState::LocalInit),
        );
        VsockMetrics::add(&self.metrics.conns_opened, 1);
        self.push_control(key, OP_REQUEST, 0);
    }

    fn allocate_local_port(&mut self, peer_port: u32) -> u32 {
        loop {
            let port = self.next_local_port;
            self.next_local_port = self
                .next_local_port
                .checked_add(1)
                .unwrap_or(FIRST_LOCAL_PORT);
            if !self.conns.contains_key(&(port, peer_port)) {
                return port;
            }
        }
    }

    fn conn_event(&mut self, key: ConnKey, events: EventSet) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        let broken = events.intersects(EventSet::ERROR | EventSet::HANG_UP);
        if conn.has_pending_tx() && (events.contains(EventSet::OUT) || broken) {
            if conn.flush().is_err() {
                self.kill(key);
                return;
            }
            if !conn.has_pending_tx() && conn.peer_shut_send {
                let _ = conn.stream.shutdown(std::net::Shutdown::Write);
            }
            if conn.needs_credit_update() {
                self.push_control(key, OP_CREDIT_UPDATE, 0);
            }
        }
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if conn.wants_read() && (events.contains(EventSet::IN) || broken) {
            conn.rx_pending = true;
            self.rx_ready.push_back(key);
        }
        self.update_interest(key);
    }

    /// Handles one packet from the guest.
    pub fn send_to_host(&mut self, h: &PacketHeader, payload: &[u8]) {
        VsockMetrics::add(&self.metrics.tx_packets, 1);
        if h.src_cid != self.guest_cid || h.dst_cid != VSOCK_HOST_CID {
            VsockMetrics::add(&self.metrics.malformed_packets, 1);
            warn_guest!(
                src_cid = h.src_cid,
                dst_cid = h.dst_cid,
                "vsock: packet with wrong cids dropped"
            );
            return;
        }
        let key = (h.dst_port, h.src_port);
        if h.type_ != TYPE_STREAM {
            VsockMetrics::add(&self.metrics.malformed_packets, 1);
            if h.op != OP_RST {
                self.push_control(key, OP_RST, 0);
            }
            return;
        }
        let Some(conn) = self.conns.get_mut(&key) else {
            match h.op {
                OP_REQUEST => self.connect_to_host(h),
                OP_RST => {}
                _ => self.push_control(key, OP_RST, 0),
            }
            return;
        };
        conn.update_peer_credit(h.buf_alloc, h.fwd_cnt);
        match (h.op, conn.state) {
            (OP_RESPONSE, ConnState::LocalInit) => {
                conn.state = ConnState::Established;
                conn.prepend_control(format!("OK {}\n", key.0).as_bytes());
                if conn.flush().is_err() {
                    self.kill(key);
                    return;
                }
            }
            (OP_RW, ConnState::Established | ConnState::LocalClosed) if !conn.peer_shut_send => {
                VsockMetrics::add(&self.metrics.tx_bytes, payload.len() as u64);
                match conn.send(payload) {
                    Ok(()) => {
                        if conn.needs_credit_update() {
                            self.push_control(key, OP_CREDIT_UPDATE, 0);
                        }
                    }
                    Err(e) => {
                        if matches!(e, super::super::csm::TxError::CreditExceeded) {
                            VsockMetrics::add(&self.metrics.credit_violations, 1);
                            warn_guest!(port = key.0, "vsock: guest exceeded its credit");
                        }
                        self.kill(key);
                        return;
                    }
                }
            }
            (OP_SHUTDOWN, _) => {
                if h.flags & SHUTDOWN_SEND != 0 {
                    conn.peer_shut_send = true;
                    if !conn.has_pending_tx() {
                        let _ = conn.stream.shutdown(std::net::Shutdown::Write);
                    }
                }
                if h.flags & SHUTDOWN_RCV != 0 {
                    conn.peer_shut_recv = true;
                }
                let both = conn.peer_shut_send && conn.peer_shut_recv;
                if both || conn.state == ConnState::LocalClosed {
                    let _ = conn.flush();
                    self.kill(key);
                    return;
                }
            }
            (OP_RST, _) => {
                let _ = conn.flush();
                self.remove_conn(key);
                return;
            }
            (OP_CREDIT_UPDATE, _) => {}
            (OP_CREDIT_REQUEST, _) => self.push_control(key, OP_CREDIT_UPDATE, 0),
            _ => {
                VsockMetrics::add(&self.metrics.malformed_packets, 1);
                warn_guest!(
                    op = h.op,
                    "vsock: unexpected packet for the connection state"
                );
                self.kill(key);
                return;
            }
        }
        self.update_interest(key);
    }

    fn connect_to_host(&mut self, h: &PacketHeader) {
        let key = (h.dst_port, h.src_port);
        let path = format!("{}_{}", self.uds_path.display(), h.dst_port);
        let stream = connect_nonblocking(&path);
        match stream {
            Ok(stream) => {
                let fd = stream.as_raw_fd();
                let mut conn = Connection::new(stream, key.0, key.1, ConnState::Established);
                conn.update_peer_credit(h.buf_alloc, h.fwd_cnt);
                self.fds.insert(fd, FdOwner::Conn(key));
                self.conns.insert(key, conn);
                VsockMetrics::add(&self.metrics.conns_opened, 1);
                self.push_control(key, OP_RESPONSE, 0);
                self.update_interest(key);
            }
            Err(e) => {
                VsockMetrics::add(&self.metrics.host_connect_failures, 1);
                tracing::debug!(path, error = %e, "vsock: guest connection refused");
                self.push_control(key, OP_RST, 0);
            }
        }
    }

    /// The next packet for the guest, with at most `max_payload` payload bytes; `None` when
    /// nothing is waiting, or only data and `max_payload` is 0 (the data keeps waiting, its
    /// stream unwatched, for a buffer with room).
    pub fn next_rx_packet(&mut self, max_payload: usize) -> Option<(PacketHeader, Vec<u8>)> {
        loop {
            if let Some(h) = self.control.pop_front() {
                return Some((h, Vec::new()));
            }
            if max_payload == 0 {
                return None;
            }
            let key = self.rx_ready.pop_front()?;
            let Some(conn) = self.conns.get_mut(&key) else {
                continue;
            };
            conn.rx_pending = false;
            let can_send = conn.state == ConnState::Established && !conn.peer_shut_recv;
            let len = (conn.peer_credit() as usize)
                .min(max_payload)
                .min(MAX_PKT_PAYLOAD as usize);
            if !can_send || len == 0 {
                self.update_interest(key);
                continue;
            }
            let mut buf = vec![0u8; len];
            match conn.stream.read(&mut buf) {
                Ok(0) => {
                    conn.state = ConnState::LocalClosed;
                    self.push_control(key, OP_SHUTDOWN, SHUTDOWN_RCV | SHUTDOWN_SEND);
                    self.update_interest(key);
                }
                Ok(n) => {
                    buf.truncate(n);
                    conn.record_rx(n as u32);
                    conn.rx_pending = true;
                    let fwd_cnt = conn.fwd_cnt_for_header();
                    self.rx_ready.push_back(key);
                    let mut h = self.header(key.0, key.1, OP_RW);
                    h.len = n as u32;
                    h.fwd_cnt = fwd_cnt;
                    VsockMetrics::add(&self.metrics.rx_bytes, n as u64);
                    return Some((h, buf));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.update_interest(key),
                Err(_) => self.kill(key),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn muxer(dir: &Path) -> VsockMuxer {
        VsockMuxer::new(3, &dir.join("v.sock"), Arc::new(VsockMetrics::default())).unwrap()
    }

    /// The token of the stream the muxer asked to start watching.
    fn added_token(m: &mut VsockMuxer) -> u32 {
        m.take_ops()
            .iter()
            .find_map(|op| match op {
                FdOp::Add(_, t, _) => Some(*t),
                _ => None,
            })
            .expect("the muxer watches a new stream")
    }

    fn guest_pkt(src_port: u32, dst_port: u32, op: u16) -> PacketHeader {
        PacketHeader {
            src_cid: 3,
            dst_cid: 2,
            src_port,
            dst_port,
            type_: TYPE_STREAM,
            op,
            buf_alloc: 64 * 1024,
            ..Default::default()
        }
    }

    /// Reads one line from a blocking stream.
    fn read_line(stream: &mut UnixStream) -> String {
        let mut line = Vec::new();
        let mut b = [0u8];
        while stream.read(&mut b).unwrap() == 1 && b[0] != b'\n' {
            line.push(b[0]);
        }
        String::from_utf8(line).unwrap()
    }

    #[test]
    fn test_host_initiated_connection() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = muxer(dir.path());
        let mut host = UnixStream::connect(dir.path().join("v.sock")).unwrap();
        host.write_all(b"CONNECT 52\nhello").unwrap();
        m.accept();
        let tok = match m.take_ops()[0] {
            FdOp::Add(_, tok, _) => tok,
            other => panic!("{other:?}"),
        };
        m.handle_host_event(tok, EventSet::IN);
        let (req, _) = m.next_rx_packet(4096).unwrap();
        assert_eq!(
            (req.op, req.dst_port, req.src_port, req.dst_cid),
            (OP_REQUEST, 52, FIRST_LOCAL_PORT, 3)
        );
        // The guest accepts.
        m.send_to_host(&guest_pkt(52, FIRST_LOCAL_PORT, OP_RESPONSE), &[]);
        assert_eq!(read_line(&mut host), format!("OK {FIRST_LOCAL_PORT}"));
        // The bytes after the CONNECT line reach the guest.
        m.handle_host_event(tok, EventSet::IN);
        let (rw, data) = m.next_rx_packet(4096).unwrap();
        assert_eq!(rw.op, OP_RW);
        assert_eq!(data, b"hello");
        // Guest data reaches the host.
        m.send_to_host(&guest_pkt(52, FIRST_LOCAL_PORT, OP_RW), b"world");
        let mut buf = [0u8; 5];
        host.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"world");
        // Host closes: the guest is told.
        drop(host);
        // The connection is still queued for reading after "hello": it now reads EOF.
        let (shut, _) = m.next_rx_packet(4096).unwrap();
        assert_eq!(shut.op, OP_SHUTDOWN);
        m.send_to_host(&guest_pkt(52, FIRST_LOCAL_PORT, OP_RST), &[]);
        assert_eq!(m.connection_count(), 0);
    }

    #[test]
    fn test_data_waits_for_a_buffer_with_room() {
        // Found by the vsock_packet fuzz target: with host data waiting and a header-only rx
        // buffer, the muxer re-armed the stream's epoll interest on every pass without reading
        // it, and the device event loop spun.
        let dir = tempfile::tempdir().unwrap();
        let mut m = muxer(dir.path());
        let listener = UnixListener::bind(dir.path().join("v.sock_5")).unwrap();
        m.send_to_host(&guest_pkt(1000, 5, OP_REQUEST), &[]);
        assert_eq!(m.next_rx_packet(0).unwrap().0.op, OP_RESPONSE);
        let (mut host, _) = listener.accept().unwrap();
        host.write_all(b"data").unwrap();
        let tok = added_token(&mut m);
        m.handle_host_event(tok, EventSet::IN);
        assert!(matches!(m.take_ops()[..], [FdOp::Remove(..)]));
        // No room for data: nothing, and the stream stays unwatched.
        assert!(m.next_rx_packet(0).is_none());
        assert!(m.take_ops().is_empty());
        assert!(m.has_rx());
        let (rw, data) = m.next_rx_packet(4096).unwrap();
        assert_eq!((rw.op, data.as_slice()), (OP_RW, &b"data"[..]));
    }

    #[test]
    fn test_guest_connections_to_a_full_service_are_refused_not_waited_for() {
        // Found in review, reproduced through the vsock_packet fuzz harness: the connection to
        // the host service was a blocking connect(), so a guest requesting connections faster
        // than the service accepted them stopped the device thread.
        let dir = tempfile::tempdir().unwrap();
        let mut m = muxer(dir.path());
        let listener = UnixListener::bind(dir.path().join("v.sock_5")).unwrap();
        nix::sys::socket::listen(&listener, nix::sys::socket::Backlog::new(1).unwrap()).unwrap();
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for port in 1000..1010 {
                m.send_to_host(&guest_pkt(port, 5, OP_REQUEST), &[]);
            }
            let _ = done.send(m);
        });
        let m = finished
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("connecting to a service that does not accept blocked");
        let failures = m
            .metrics
            .host_connect_failures
            .load(std::sync::atomic::Ordering::Relaxed);
        assert!(failures > 0);
        assert_eq!(m.connection_count() as u64, 10 - failures);
        drop(listener);
    }

    #[test]
    fn test_bad_connect_line_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = muxer(dir.path());
        let mut host = UnixStream::connect(dir.path().join("v.sock")).unwrap();
        host.write_all(b"HELLO 52\n").unwrap();
        m.accept();
        let tok = match m.take_ops()[0] {
            FdOp::Add(_, tok, _) => tok,
            other => panic!("{other:?}"),
        };
        m.handle_host_event(tok, EventSet::IN);
        assert!(m.next_rx_packet(4096).is_none());
        assert!(matches!(m.take_ops()[0], FdOp::Remove(..)));
        m.bury();
        let mut buf = [0u8; 1];
        assert_eq!(host.read(&mut buf).unwrap(), 0);
        assert_eq!(
            m.metrics
                .host_handshake_failures
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
    }

    #[test]
    fn test_guest_initiated_connection_and_refusal() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = muxer(dir.path());
        // Nobody listens on port 99: RST.
        m.send_to_host(&guest_pkt(1000, 99, OP_REQUEST), &[]);
        assert_eq!(m.next_rx_packet(4096).unwrap().0.op, OP_RST);
        let listener = UnixListener::bind(dir.path().join("v.sock_99")).unwrap();
        m.send_to_host(&guest_pkt(1000, 99, OP_REQUEST), &[]);
        let (resp, _) = m.next_rx_packet(4096).unwrap();
        assert_eq!(
            (resp.op, resp.src_port, resp.dst_port),
            (OP_RESPONSE, 99, 1000)
        );
        let (mut host, _) = listener.accept().unwrap();
        m.send_to_host(&guest_pkt(1000, 99, OP_RW), b"ping");
        let mut buf = [0u8; 4];
        host.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"ping");
        // Full shutdown from the guest: RST back and the connection is gone.
        let mut shut = guest_pkt(1000, 99, OP_SHUTDOWN);
        shut.flags = SHUTDOWN_RCV | SHUTDOWN_SEND;
        m.send_to_host(&shut, &[]);
        assert_eq!(m.next_rx_packet(4096).unwrap().0.op, OP_RST);
        assert_eq!(m.connection_count(), 0);
    }

    #[test]
    fn test_packets_with_wrong_cid_or_unknown_connection() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = muxer(dir.path());
        let mut spoofed = guest_pkt(1, 2, OP_REQUEST);
        spoofed.src_cid = 7;
        m.send_to_host(&spoofed, &[]);
        assert!(m.next_rx_packet(4096).is_none());
        m.send_to_host(&guest_pkt(1, 2, OP_RW), b"x");
        assert_eq!(m.next_rx_packet(4096).unwrap().0.op, OP_RST);
        m.send_to_host(&guest_pkt(1, 2, OP_RST), &[]);
        assert!(m.next_rx_packet(4096).is_none());
        let mut dgram = guest_pkt(1, 2, OP_REQUEST);
        dgram.type_ = 2;
        m.send_to_host(&dgram, &[]);
        assert_eq!(m.next_rx_packet(4096).unwrap().0.op, OP_RST);
    }

    #[test]
    fn test_credit_limits_host_to_guest_data() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = muxer(dir.path());
        let listener = UnixListener::bind(dir.path().join("v.sock_5")).unwrap();
        let mut req = guest_pkt(1000, 5, OP_REQUEST);
        req.buf_alloc = 10;
        m.send_to_host(&req, &[]);
        let _ = m.next_rx_packet(4096).unwrap();
        let (mut host, _) = listener.accept().unwrap();
        host.write_all(&[1u8; 100]).unwrap();
        let fd_tok = added_token(&mut m);
        m.handle_host_event(fd_tok, EventSet::IN);
        let (_, data) = m.next_rx_packet(4096).unwrap();
        assert_eq!(data.len(), 10);
        // No credit left: nothing more until the guest reports progress.
        assert!(m.next_rx_packet(4096).is_none());
        let mut update = guest_pkt(1000, 5, OP_CREDIT_UPDATE);
        update.buf_alloc = 10;
        update.fwd_cnt = 10;
        m.send_to_host(&update, &[]);
        m.handle_host_event(fd_tok, EventSet::IN);
        assert_eq!(m.next_rx_packet(4096).unwrap().1.len(), 10);
    }
}
