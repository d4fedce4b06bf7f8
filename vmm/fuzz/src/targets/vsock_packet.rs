//! virtio-vsock: tx chains parsed into packets and handed to the unix-socket muxer and the
//! connection state machine, rx buffers filled with the muxer's packets, all through the
//! transport and the event loop. The host side is real unix sockets in a private directory:
//! host processes connecting to the device's socket (`CONNECT <port>` lines), a host service
//! listening on guest-initiated port 52 (slow to accept: a backlog of one), and their streams
//! writing, reading, closing.
//!
//! Target commands (`opcode % 6`):
//! - 0 `kind: u8` then, for an even kind, `port: u32` (a `CONNECT <port>\n` line) or, for an
//!   odd one, `len: u8` and raw line bytes: a host process connects to the device socket.
//! - 1 `stream: u8, len: u8, bytes`: a host stream writes.
//! - 2 `stream: u8`: a host stream reads what is waiting.
//! - 3 `stream: u8`: a host stream shuts down its write side.
//! - 4 `stream: u8`: a host stream closes.
//! - 5: the event loop runs.

use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use crate::{Reader, Session};
use devices::metrics::MetricsSource;
use devices::virtio::vsock::{Vsock, VsockConfig};
use nix::sys::socket::{listen, Backlog};

/// The guest's CID.
const GUEST_CID: u64 = 3;
/// The guest port a host service listens on (`<uds_path>_52`).
const SERVICE_PORT: u32 = 52;
/// Listen backlog of the host service.
const SERVICE_BACKLOG: i32 = 1;
/// Most host streams kept at once.
const MAX_STREAMS: usize = 8;

struct Host {
    uds_path: PathBuf,
    service: UnixListener,
}

/// The device socket's path and the host service, in a directory of this process.
fn host() -> &'static Host {
    static HOST: OnceLock<Host> = OnceLock::new();
    HOST.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("rmfz-vsock-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the socket directory");
        let uds_path = dir.join("v.sock");
        let service = UnixListener::bind(dir.join(format!("v.sock_{SERVICE_PORT}")))
            .expect("bind the host service");
        // A service slow to accept: its queue holds two connections, which the harness
        // accepts only between commands.
        listen(
            &service,
            Backlog::new(SERVICE_BACKLOG).expect("a valid backlog"),
        )
        .expect("shrink the host service's backlog");
        service
            .set_nonblocking(true)
            .expect("non-blocking host service");
        Host { uds_path, service }
    })
}

/// Accepts the connections the device made to the host service.
fn accept(host: &Host, streams: &mut Vec<UnixStream>) {
    while let Ok((s, _)) = host.service.accept() {
        if streams.len() < MAX_STREAMS && s.set_nonblocking(true).is_ok() {
            streams.push(s);
        }
    }
}

fn pick(streams: &mut [UnixStream], r: &mut Reader<'_>) -> Option<usize> {
    let i = usize::from(r.u8());
    (!streams.is_empty()).then(|| i % streams.len())
}

fn host_command(
    session: &mut Session,
    host: &Host,
    streams: &mut Vec<UnixStream>,
    opcode: u8,
    r: &mut Reader<'_>,
) {
    accept(host, streams);
    match opcode % 6 {
        0 => {
            let kind = r.u8();
            let line = if kind.is_multiple_of(2) {
                format!("CONNECT {}\n", r.u32()).into_bytes()
            } else {
                let len = usize::from(r.u8());
                r.bytes(len).to_vec()
            };
            if streams.len() < MAX_STREAMS {
                if let Ok(mut s) = UnixStream::connect(&host.uds_path) {
                    let _ = s.set_nonblocking(true);
                    let _ = s.write(&line);
                    streams.push(s);
                }
            }
        }
        1 => {
            let i = pick(streams, r);
            let len = usize::from(r.u8());
            let bytes = r.bytes(len);
            if let Some(i) = i {
                let _ = streams[i].write(bytes);
            }
        }
        2 => {
            if let Some(i) = pick(streams, r) {
                let mut buf = [0u8; 16 * 1024];
                loop {
                    match streams[i].read(&mut buf) {
                        Ok(0) => break,
                        Ok(_) => {}
                        Err(e) if e.kind() == ErrorKind::Interrupted => {}
                        Err(_) => break,
                    }
                }
            }
        }
        3 => {
            if let Some(i) = pick(streams, r) {
                let _ = streams[i].shutdown(Shutdown::Write);
            }
        }
        4 => {
            if let Some(i) = pick(streams, r) {
                streams.swap_remove(i);
            }
        }
        _ => {}
    }
    session.run_events();
    accept(host, streams);
}

/// Runs one input; returns the device's counters as JSON.
pub fn run(data: &[u8]) -> String {
    let host = host();
    let mut r = Reader::new(data);
    let vsock = Vsock::new(VsockConfig {
        guest_cid: GUEST_CID,
        uds_path: host.uds_path.clone(),
    })
    .expect("bind the device socket");
    let metrics = vsock.metrics();
    let mut session = Session::new(Arc::new(Mutex::new(vsock)), &mut r);
    let mut streams = Vec::new();
    session.drive(&mut r, |s, opcode, r| {
        host_command(s, host, &mut streams, opcode, r)
    });
    // Connections the guest opened last are still to be accepted and closed.
    accept(host, &mut streams);
    metrics.snapshot().to_string()
}
