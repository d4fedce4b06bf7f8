//! One published port open on the host: a tcp listener whose connections are each
//! dialed through the guest and spliced, or a udp socket with one dialed stream per
//! peer address (datagrams framed as the dial service says, closed after an idle time).
//!
//! The socket is bound before [`Forwarder::open`] returns, so a port in use is reported
//! to the caller at once; [`Forwarder::close`] returns once the socket is closed.

// Whether a listener may take a port whose old connections linger: per OS.
#[cfg(unix)]
#[path = "forwarder/rebind_unix.rs"]
mod rebind;
#[cfg(windows)]
#[path = "forwarder/rebind_windows.rs"]
mod rebind;

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use rmachine_protocol::dial::{frame_datagram, MAX_DATAGRAM};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, trace, warn, Instrument};

use crate::connector::{dial, GuestConnector};
use crate::port::{PublishedPort, Transport};

/// Pending connections the host kernel queues for a listener.
const LISTEN_BACKLOG: i32 = 1024;

/// Pause after a failed `accept` (out of file descriptors, …), so that it is not retried
/// in a busy loop.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Datagrams queued for one udp peer while its guest stream is being dialed or is slow;
/// more are dropped, as a network would.
const UDP_PEER_QUEUE: usize = 64;

/// Why a port could not be opened on the host.
#[derive(Debug, thiserror::Error)]
pub enum ForwarderError {
    #[error("cannot open {port} on the host: the address is in use by another program")]
    InUse { port: PublishedPort },
    #[error("cannot open {port} on the host")]
    Bind {
        port: PublishedPort,
        #[source]
        source: io::Error,
    },
}

/// A published port open on the host. Dropping it closes the socket soon; [`close`]
/// waits until it is closed.
///
/// [`close`]: Forwarder::close
pub struct Forwarder {
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

impl Forwarder {
    /// Binds `port` on the host and starts forwarding to the guest. Must be called inside
    /// a tokio runtime.
    #[cfg(test)]
    pub fn open(
        port: PublishedPort,
        connector: Arc<dyn GuestConnector>,
        udp_idle_timeout: Duration,
    ) -> Result<Forwarder, ForwarderError> {
        Forwarder::open_at(port, port.host_ip, connector, udp_idle_timeout)
    }

    /// [`Forwarder::open`], binding `bind_ip` on the host instead of the port's own
    /// address (a remote engine's ports open on this host's loopback).
    pub fn open_at(
        port: PublishedPort,
        bind_ip: IpAddr,
        connector: Arc<dyn GuestConnector>,
        udp_idle_timeout: Duration,
    ) -> Result<Forwarder, ForwarderError> {
        let bind_err = |source: io::Error| match source.kind() {
            io::ErrorKind::AddrInUse => ForwarderError::InUse { port },
            _ => ForwarderError::Bind { port, source },
        };
        let cancel = CancellationToken::new();
        let span = tracing::info_span!("port", %port);
        let task = match port.transport {
            Transport::Tcp => {
                let listener = bind_tcp(port, bind_ip).map_err(bind_err)?;
                tokio::spawn(serve_tcp(listener, port, connector, cancel.clone()).instrument(span))
            }
            Transport::Udp => {
                let socket = bind_udp(port, bind_ip).map_err(bind_err)?;
                tokio::spawn(
                    serve_udp(socket, port, connector, udp_idle_timeout, cancel.clone())
                        .instrument(span),
                )
            }
        };
        Ok(Forwarder { cancel, task })
    }

    /// Closes the host socket and ends the port's connections; returns once the socket
    /// is closed.
    pub async fn close(mut self) {
        self.cancel.cancel();
        if let Err(err) = (&mut self.task).await {
            if err.is_panic() {
                warn!("a port forwarder panicked");
            }
        }
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// A socket for `port`: IPv6 sockets are IPv6-only, so that `[::]:P` and `0.0.0.0:P`
/// (which dockerd publishes side by side) can both be bound, as in the guest.
fn socket_for(
    port: PublishedPort,
    bind_ip: IpAddr,
    ty: Type,
    protocol: Protocol,
) -> io::Result<(Socket, SocketAddr)> {
    let addr = SocketAddr::new(bind_ip, port.host_port);
    let domain = match bind_ip {
        IpAddr::V4(_) => Domain::IPV4,
        IpAddr::V6(_) => Domain::IPV6,
    };
    let socket = Socket::new(domain, ty, Some(protocol))?;
    if domain == Domain::IPV6 {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    Ok((socket, addr))
}

fn bind_tcp(port: PublishedPort, bind_ip: IpAddr) -> io::Result<TcpListener> {
    let (socket, addr) = socket_for(port, bind_ip, Type::STREAM, Protocol::TCP)?;
    rebind::allow_rebind(&socket)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    TcpListener::from_std(socket.into())
}

fn bind_udp(port: PublishedPort, bind_ip: IpAddr) -> io::Result<UdpSocket> {
    let (socket, addr) = socket_for(port, bind_ip, Type::DGRAM, Protocol::UDP)?;
    socket.bind(&addr.into())?;
    UdpSocket::from_std(socket.into())
}

async fn serve_tcp(
    listener: TcpListener,
    port: PublishedPort,
    connector: Arc<dyn GuestConnector>,
    cancel: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            _ = cancel.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((client, peer)) => {
                let conn = forward_tcp(client, peer, port, Arc::clone(&connector));
                let cancel = cancel.clone();
                tokio::spawn(
                    async move {
                        tokio::select! {
                            _ = cancel.cancelled() => {}
                            _ = conn => {}
                        }
                    }
                    .in_current_span(),
                );
            }
            Err(err) => {
                warn!(error = %err, "accept failed");
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(ACCEPT_ERROR_PAUSE) => {}
                }
            }
        }
    }
    debug!("listener closed");
}

async fn forward_tcp(
    mut client: TcpStream,
    peer: SocketAddr,
    port: PublishedPort,
    connector: Arc<dyn GuestConnector>,
) {
    if let Err(err) = client.set_nodelay(true) {
        debug!(%peer, error = %err, "cannot set TCP_NODELAY");
    }
    let mut guest = match dial(connector.as_ref(), &port.dial_request()).await {
        Ok(guest) => guest,
        Err(err) => {
            warn!(%peer, error = %err, source = ?std::error::Error::source(&err), "cannot reach the port in the guest");
            return;
        }
    };
    match tokio::io::copy_bidirectional(&mut client, &mut guest).await {
        Ok((to_guest, from_guest)) => trace!(%peer, to_guest, from_guest, "connection closed"),
        Err(err) => debug!(%peer, error = %err, "connection ended with an error"),
    }
}

async fn serve_udp(
    socket: UdpSocket,
    port: PublishedPort,
    connector: Arc<dyn GuestConnector>,
    idle_timeout: Duration,
    cancel: CancellationToken,
) {
    let socket = Arc::new(socket);
    let mut peers: HashMap<SocketAddr, mpsc::Sender<Vec<u8>>> = HashMap::new();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let received = tokio::select! {
            _ = cancel.cancelled() => break,
            received = socket.recv_from(&mut buf) => received,
        };
        let (len, peer) = match received {
            Ok(received) => received,
            Err(err) => {
                // An ICMP error for an earlier send_to, on some platforms; the socket
                // stays usable.
                debug!(error = %err, "udp receive failed");
                continue;
            }
        };
        let datagram = buf[..len].to_vec();
        let datagram = match peers.get(&peer) {
            None => datagram,
            Some(tx) => match tx.try_send(datagram) {
                Ok(()) => continue,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    trace!(%peer, "udp peer queue full, datagram dropped");
                    continue;
                }
                Err(mpsc::error::TrySendError::Closed(datagram)) => datagram,
            },
        };
        // A new peer, or one whose session ended: forget ended sessions, start one.
        peers.retain(|_, tx| !tx.is_closed());
        let (tx, rx) = mpsc::channel(UDP_PEER_QUEUE);
        // The queue is new and empty, so this cannot fail.
        let _ = tx.try_send(datagram);
        peers.insert(peer, tx);
        let session = udp_session(
            Arc::clone(&socket),
            peer,
            port,
            Arc::clone(&connector),
            rx,
            idle_timeout,
            cancel.clone(),
        );
        tokio::spawn(session.in_current_span());
    }
    debug!("udp socket closed");
}

/// Forwards the datagrams of one host peer through one guest stream until the stream
/// ends, the port closes or nothing was sent either way for `idle_timeout`.
async fn udp_session(
    socket: Arc<UdpSocket>,
    peer: SocketAddr,
    port: PublishedPort,
    connector: Arc<dyn GuestConnector>,
    mut datagrams: mpsc::Receiver<Vec<u8>>,
    idle_timeout: Duration,
    cancel: CancellationToken,
) {
    let request = port.dial_request();
    let dialed = tokio::select! {
        _ = cancel.cancelled() => return,
        dialed = dial(connector.as_ref(), &request) => dialed,
    };
    let mut guest = match dialed {
        Ok(guest) => guest,
        Err(err) => {
            warn!(%peer, error = %err, source = ?std::error::Error::source(&err), "cannot reach the port in the guest");
            return;
        }
    };
    debug!(%peer, "udp session started");
    let mut from_guest = Vec::new();
    let mut read_buf = vec![0u8; MAX_DATAGRAM + 2];
    let idle = tokio::time::sleep(idle_timeout);
    tokio::pin!(idle);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = &mut idle => {
                debug!(%peer, "udp session idle, closed");
                break;
            }
            datagram = datagrams.recv() => {
                let Some(datagram) = datagram else { break };
                let Some(frame) = frame_datagram(&datagram) else { continue };
                if let Err(err) = guest.write_all(&frame).await {
                    debug!(%peer, error = %err, "udp session: guest stream closed");
                    break;
                }
            }
            read = guest.read(&mut read_buf) => {
                match read {
                    Ok(0) => break,
                    Ok(n) => from_guest.extend_from_slice(&read_buf[..n]),
                    Err(err) => {
                        debug!(%peer, error = %err, "udp session: guest stream failed");
                        break;
                    }
                }
                while let Some(datagram) = next_frame(&mut from_guest) {
                    if let Err(err) = socket.send_to(&datagram, peer).await {
                        debug!(%peer, error = %err, "udp send to the host peer failed");
                    }
                }
            }
        }
        idle.as_mut()
            .reset(tokio::time::Instant::now() + idle_timeout);
    }
    // Ends the datagram queue, so the next datagram from this peer starts a new session.
    datagrams.close();
}

/// Takes one complete frame (2-byte big-endian length, payload) off the front of `buf`.
pub(crate) fn next_frame(buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    let header: [u8; 2] = buf.get(..2)?.try_into().ok()?;
    let len = usize::from(u16::from_be_bytes(header));
    if buf.len() < 2 + len {
        return None;
    }
    let payload = buf[2..2 + len].to_vec();
    buf.drain(..2 + len);
    Some(payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_frames_are_taken_whole() {
        let mut buf = vec![0, 2, b'h', b'i', 0, 0, 0, 3, b'a'];
        assert_eq!(next_frame(&mut buf), Some(b"hi".to_vec()));
        assert_eq!(next_frame(&mut buf), Some(Vec::new()));
        assert_eq!(next_frame(&mut buf), None);
        buf.extend_from_slice(b"bc");
        assert_eq!(next_frame(&mut buf), Some(b"abc".to_vec()));
        assert!(buf.is_empty());
        assert_eq!(next_frame(&mut vec![0]), None);
    }

    #[tokio::test]
    async fn test_ipv4_and_ipv6_wildcards_bind_side_by_side() {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let host_port = probe.local_addr().unwrap().port();
        drop(probe);
        let v4 = bind_tcp(
            PublishedPort {
                transport: Transport::Tcp,
                host_ip: "127.0.0.1".parse().unwrap(),
                host_port,
            },
            "127.0.0.1".parse().unwrap(),
        );
        assert!(v4.is_ok(), "{v4:?}");
        // Skipped silently where the host has no IPv6 loopback.
        if std::net::TcpListener::bind("[::1]:0").is_ok() {
            let v6 = bind_tcp(
                PublishedPort {
                    transport: Transport::Tcp,
                    host_ip: "::".parse().unwrap(),
                    host_port,
                },
                "::".parse().unwrap(),
            );
            assert!(v6.is_ok(), "{v6:?}");
        }
    }

    #[tokio::test]
    async fn test_close_frees_the_port_at_once() {
        struct NoGuest;
        impl GuestConnector for NoGuest {
            fn connect(
                &self,
                _: rmachine_protocol::Service,
            ) -> crate::connector::ConnectFuture<'_> {
                Box::pin(async { Err(io::Error::from(io::ErrorKind::ConnectionRefused)) })
            }
        }
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = PublishedPort {
            transport: Transport::Tcp,
            host_ip: "127.0.0.1".parse().unwrap(),
            host_port: probe.local_addr().unwrap().port(),
        };
        drop(probe);
        let forwarder = Forwarder::open(port, Arc::new(NoGuest), Duration::from_secs(60)).unwrap();
        assert!(matches!(
            Forwarder::open(port, Arc::new(NoGuest), Duration::from_secs(60)),
            Err(ForwarderError::InUse { .. })
        ));
        forwarder.close().await;
        let err = TcpStream::connect(("127.0.0.1", port.host_port))
            .await
            .err()
            .unwrap();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);
        Forwarder::open(port, Arc::new(NoGuest), Duration::from_secs(60))
            .unwrap()
            .close()
            .await;
    }
}
