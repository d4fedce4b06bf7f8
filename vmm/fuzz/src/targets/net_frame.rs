//! virtio-net: tx chains (header, frame gathering, oversized and runt frames, offload flags)
//! parsed and sent to the stream backend, frames from the backend laid out over rx buffers
//! (merged or not, per the negotiated MRG_RXBUF), all through the transport and the event loop.
//! The backend is one end of a socketpair; the harness holds the peer end.
//!
//! Target commands (`opcode % 4`):
//! - 0 `ctl: u8, len: u16, fill: u8, bytes`: the peer sends a frame of `len` bytes (plus
//!   64 KiB with `ctl & 2`) made of `fill` input bytes and zeroes, behind its length prefix, or
//!   behind a raw `u32` prefix read after `ctl` with `ctl & 1`.
//! - 1 `len: u8, bytes`: the peer sends raw bytes.
//! - 2: the peer reads everything the device sent.
//! - 3: the peer closes.
//!
//! The event loop runs after each.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};

use crate::{Reader, Session};
use devices::metrics::MetricsSource;
use devices::virtio::net::{Net, NetConfig, StreamBackend};

/// Writes what the socket takes now.
fn send(peer: &mut UnixStream, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        match peer.write(bytes) {
            Ok(0) => return,
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

fn peer_command(
    session: &mut Session,
    peer: &mut Option<UnixStream>,
    opcode: u8,
    r: &mut Reader<'_>,
) {
    match opcode % 4 {
        0 => {
            let c = r.u8();
            let raw_prefix = (c & 1 != 0).then(|| r.u32());
            let mut len = usize::from(r.u16());
            if c & 2 != 0 {
                len += 64 * 1024;
            }
            let fill = usize::from(r.u8());
            let head = r.bytes(fill);
            let prefix = raw_prefix.unwrap_or(len as u32);
            let mut msg = Vec::with_capacity(4 + len);
            msg.extend_from_slice(&prefix.to_be_bytes());
            msg.extend_from_slice(&head[..head.len().min(len)]);
            msg.resize(4 + len, 0);
            if let Some(p) = peer.as_mut() {
                send(p, &msg);
            }
        }
        1 => {
            let len = usize::from(r.u8());
            let bytes = r.bytes(len);
            if let Some(p) = peer.as_mut() {
                send(p, bytes);
            }
        }
        2 => {
            if let Some(p) = peer.as_mut() {
                let mut buf = vec![0u8; 64 * 1024];
                while matches!(p.read(&mut buf), Ok(n) if n > 0) {}
            }
        }
        _ => *peer = None,
    }
    session.run_events();
}

/// Runs one input; returns the device's counters as JSON.
pub fn run(data: &[u8]) -> String {
    let mut r = Reader::new(data);
    let (backend, peer) = StreamBackend::pair().expect("a socketpair");
    peer.set_nonblocking(true).expect("non-blocking peer");
    let net = Net::new(
        NetConfig {
            mac: [2, 0, 0, 0, 0, 1],
        },
        Box::new(backend),
    )
    .expect("the net device");
    let metrics = net.metrics();
    let mut session = Session::new(Arc::new(Mutex::new(net)), &mut r);
    let mut peer = Some(peer);
    session.drive(&mut r, |s, opcode, r| peer_command(s, &mut peer, opcode, r));
    metrics.snapshot().to_string()
}
