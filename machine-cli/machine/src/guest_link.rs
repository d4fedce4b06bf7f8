//! "Connect to guest service S": the one way the host talks to the agent, whatever
//! carries the bytes (DESIGN.md, "The guest link").
//!
//! Carriers:
//! - [`Carrier::Tcp`]: QEMU user-mode forwarding; the machine's token is presented.
//! - [`Carrier::HybridVsock`]: rmachine-vmm's unix socket and the `CONNECT <port>` line.
//!
//! Every connection then carries the hello line of [`rmachine_protocol::hello`].

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use rmachine_protocol::control::{self, Reply, ReplyError, Request};
use rmachine_protocol::hello::{self, HelloError};
use rmachine_protocol::line::{read_line_limited, Line, MAX_CONTROL_LINE, MAX_HEADER_LINE};
use rmachine_protocol::Service;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, ReadBuf};
use tokio::net::TcpStream;

use crate::sys::local_socket::{self, LocalStream};

/// How long a connect plus hello may take before the link is called unreachable.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How many connects over QEMU's user-mode forwards run at once in this process. QEMU's
/// slirp listens on each forward with a backlog of one: a burst of connects (100 API
/// clients at once) overflows it, the kernel drops the extra SYNs and retries them after
/// 1, 3, 7 s, and the handshakes time out. Queued here, they all get through.
const TCP_CONNECTS_AT_ONCE: usize = 4;
static TCP_CONNECTS: tokio::sync::Semaphore =
    tokio::sync::Semaphore::const_new(TCP_CONNECTS_AT_ONCE);

/// How long a connect may wait for its turn behind others.
const QUEUE_TIMEOUT: Duration = Duration::from_secs(60);

/// The longest [`Carrier::connect`] takes: its turn, then the handshake. Callers that
/// put their own deadline around a connect use this.
pub const CONNECT_DEADLINE: Duration = QUEUE_TIMEOUT.saturating_add(HANDSHAKE_TIMEOUT);

/// What carries bytes between host and guest.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Carrier {
    /// TCP forwards on the host's loopback, one per guest service, with the token.
    Tcp {
        #[serde(with = "port_pairs")]
        ports: BTreeMap<u16, SocketAddr>,
        token: String,
    },
    /// rmachine-vmm's hybrid vsock unix socket.
    HybridVsock { uds: PathBuf },
}

/// The forward map as a list of `[guest_port, "host:port"]` pairs: integer map keys do not
/// survive serde's buffering of internally tagged enums.
mod port_pairs {
    use std::collections::BTreeMap;
    use std::net::SocketAddr;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(
        map: &BTreeMap<u16, SocketAddr>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        map.iter().collect::<Vec<_>>().serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<u16, SocketAddr>, D::Error> {
        Ok(Vec::<(u16, SocketAddr)>::deserialize(d)?
            .into_iter()
            .collect())
    }
}

/// Why a guest service could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("no forward for guest port {0} on this carrier")]
    NoForward(u16),
    #[error("cannot connect to {target}")]
    Connect {
        target: String,
        #[source]
        source: io::Error,
    },
    #[error("guest link closed during the handshake with the {0} service")]
    Closed(Service),
    #[error("timed out after {HANDSHAKE_TIMEOUT:?} waiting for the {0} service")]
    Timeout(Service),
    #[error("timed out after {QUEUE_TIMEOUT:?} waiting behind other connections to the guest")]
    Busy,
    #[error("vsock muxer refused port {port}: {answer:?}")]
    VsockRefused { port: u16, answer: String },
    #[error("handshake with the {service} service failed")]
    Hello {
        service: Service,
        #[source]
        source: HelloError,
    },
    #[error("i/o on the guest link")]
    Io(#[from] io::Error),
}

/// A connected, greeted guest service stream.
pub struct GuestStream {
    inner: BufReader<Inner>,
}

enum Inner {
    Tcp(TcpStream),
    Local(LocalStream),
}

impl Carrier {
    /// Connects to `service` and completes the hello exchange.
    /// Connects over QEMU's forwards wait for their turn first (see
    /// [`TCP_CONNECTS_AT_ONCE`]).
    pub async fn connect(&self, service: Service) -> Result<GuestStream, LinkError> {
        let _turn = match self {
            Carrier::Tcp { .. } => Some(
                tokio::time::timeout(QUEUE_TIMEOUT, TCP_CONNECTS.acquire())
                    .await
                    .map_err(|_| LinkError::Busy)?
                    .expect("the semaphore is never closed"),
            ),
            Carrier::HybridVsock { .. } => None,
        };
        tokio::time::timeout(HANDSHAKE_TIMEOUT, self.connect_inner(service))
            .await
            .map_err(|_| LinkError::Timeout(service))?
    }

    async fn connect_inner(&self, service: Service) -> Result<GuestStream, LinkError> {
        let port = service.port();
        let (inner, token) = match self {
            Carrier::Tcp { ports, token } => {
                let addr = ports.get(&port).ok_or(LinkError::NoForward(port))?;
                let s = TcpStream::connect(addr)
                    .await
                    .map_err(|source| LinkError::Connect {
                        target: addr.to_string(),
                        source,
                    })?;
                s.set_nodelay(true)?;
                (Inner::Tcp(s), Some(token.as_str()))
            }
            Carrier::HybridVsock { uds } => {
                let s =
                    local_socket::connect_path(uds)
                        .await
                        .map_err(|source| LinkError::Connect {
                            target: uds.display().to_string(),
                            source,
                        })?;
                (Inner::Local(s), None)
            }
        };
        let mut stream = GuestStream {
            inner: BufReader::new(inner),
        };
        if let Carrier::HybridVsock { .. } = self {
            stream
                .write_all(format!("CONNECT {port}\n").as_bytes())
                .await?;
            let answer = stream.read_header_line(service).await?;
            if !answer.starts_with(b"OK ") {
                return Err(LinkError::VsockRefused {
                    port,
                    answer: String::from_utf8_lossy(&answer).into_owned(),
                });
            }
        }
        stream
            .write_all(hello::format_hello(service, token).as_bytes())
            .await?;
        let answer = stream.read_header_line(service).await?;
        hello::parse_answer(&answer).map_err(|source| LinkError::Hello { service, source })?;
        Ok(stream)
    }
}

impl GuestStream {
    async fn read_header_line(&mut self, service: Service) -> Result<Vec<u8>, LinkError> {
        match read_line_limited(&mut self.inner, MAX_HEADER_LINE).await? {
            Line::Data(line) => Ok(line),
            Line::TooLong { .. } => Err(LinkError::Hello {
                service,
                source: HelloError::NotHello,
            }),
            Line::Eof => Err(LinkError::Closed(service)),
        }
    }

    /// Reads one line of at most `max` bytes (for line protocols on top of the stream).
    pub async fn read_line(&mut self, max: usize) -> io::Result<Line> {
        read_line_limited(&mut self.inner, max).await
    }
}

impl AsyncRead for GuestStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for GuestStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut().inner.get_mut() {
            Inner::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Inner::Local(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().inner.get_mut() {
            Inner::Tcp(s) => Pin::new(s).poll_flush(cx),
            Inner::Local(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().inner.get_mut() {
            Inner::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Inner::Local(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

impl AsyncRead for Inner {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Inner::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Inner::Local(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

/// Why a control request failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error("i/o on the control connection")]
    Io(#[from] io::Error),
    #[error("agent closed the control connection")]
    Closed,
    #[error("agent reply is longer than {MAX_CONTROL_LINE} bytes")]
    TooLong,
    #[error(transparent)]
    Reply(#[from] ReplyError),
    #[error("the agent did not answer within {CALL_TIMEOUT:?}")]
    Timeout,
}

/// How long one control request may wait for its answer: the agent answers each at once
/// (a shutdown only starts), so a request without an answer is a connection gone wrong,
/// reported as an error instead of a start or stop that waits forever.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// A client of the agent's control service over one connection.
pub struct ControlClient {
    stream: GuestStream,
    next_id: u64,
}

impl ControlClient {
    /// Connects to the control service.
    pub async fn connect(carrier: &Carrier) -> Result<ControlClient, ControlError> {
        Ok(ControlClient {
            stream: carrier.connect(Service::Control).await?,
            next_id: 1,
        })
    }

    /// Sends one request and waits for its reply.
    /// Sends one request and reads its answer, within [`CALL_TIMEOUT`] (after a timeout
    /// the connection is not used again: the answer may still be on its way).
    pub async fn call(&mut self, request: Request) -> Result<Reply, ControlError> {
        let id = self.next_id;
        self.next_id += 1;
        let exchange = async {
            self.stream
                .write_all(control::encode_request(id, request).as_bytes())
                .await?;
            match self.stream.read_line(MAX_CONTROL_LINE).await? {
                Line::Data(line) => Ok(control::parse_reply(&line, id)?),
                Line::TooLong { .. } => Err(ControlError::TooLong),
                Line::Eof => Err(ControlError::Closed),
            }
        };
        tokio::time::timeout(CALL_TIMEOUT, exchange)
            .await
            .map_err(|_| ControlError::Timeout)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A one-connection fake agent that checks the hello and answers pings.
    async fn fake_agent(token: &'static str) -> (SocketAddr, tokio::task::JoinHandle<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            let mut s = BufReader::new(s);
            let Line::Data(line) = read_line_limited(&mut s, MAX_HEADER_LINE).await.unwrap() else {
                panic!("no hello")
            };
            let hello = hello::parse_hello(&line).unwrap();
            if hello.token.as_deref() != Some(token) {
                s.get_mut()
                    .write_all(hello::format_err("wrong token").as_bytes())
                    .await
                    .unwrap();
                return line;
            }
            s.get_mut()
                .write_all(hello::format_ok().as_bytes())
                .await
                .unwrap();
            while let Line::Data(req) = read_line_limited(&mut s, MAX_CONTROL_LINE).await.unwrap() {
                let env = control::parse_request(&req).unwrap();
                let reply = control::encode_reply(env.id, control::Outcome::Ok(Reply::Pong));
                s.get_mut().write_all(reply.as_bytes()).await.unwrap();
            }
            line
        });
        (addr, task)
    }

    fn tcp(addr: SocketAddr, token: &str) -> Carrier {
        Carrier::Tcp {
            ports: BTreeMap::from([(Service::Control.port(), addr)]),
            token: token.into(),
        }
    }

    #[tokio::test]
    async fn test_control_ping_over_tcp_with_token() {
        let (addr, task) = fake_agent("s3cret").await;
        let mut client = ControlClient::connect(&tcp(addr, "s3cret")).await.unwrap();
        for _ in 0..3 {
            assert_eq!(client.call(Request::Ping {}).await.unwrap(), Reply::Pong);
        }
        drop(client);
        let hello_line = task.await.unwrap();
        assert_eq!(hello_line, b"RMACHINE 1 control s3cret");
    }

    #[tokio::test]
    async fn test_wrong_token_is_a_clear_error() {
        let (addr, _task) = fake_agent("right").await;
        let err = ControlClient::connect(&tcp(addr, "wrong"))
            .await
            .err()
            .unwrap();
        let text = format!(
            "{err}: {}",
            std::error::Error::source(&err)
                .map(|s| s.to_string())
                .unwrap_or_default()
        );
        assert!(
            matches!(err, ControlError::Link(LinkError::Hello { .. })),
            "{text}"
        );
    }

    #[tokio::test]
    async fn test_missing_forward_and_dead_port() {
        let carrier = Carrier::Tcp {
            ports: BTreeMap::new(),
            token: "t".into(),
        };
        assert!(matches!(
            carrier.connect(Service::Engine).await,
            Err(LinkError::NoForward(2375))
        ));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        assert!(matches!(
            tcp(addr, "t").connect(Service::Control).await,
            Err(LinkError::Connect { .. })
        ));
    }

    /// rmachine-vmm's hybrid vsock socket is a unix socket: on Windows the carrier says so.
    #[cfg(windows)]
    #[tokio::test]
    async fn test_hybrid_vsock_is_refused_clearly_on_windows() {
        let err = Carrier::HybridVsock {
            uds: "C:\\m\\vsock.sock".into(),
        }
        .connect(Service::Engine)
        .await
        .err()
        .expect("no unix sockets");
        let text = format!("{err}: {}", std::error::Error::source(&err).unwrap());
        assert!(text.contains("Linux"), "{text}");
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn test_hybrid_vsock_connect_line() {
        use tokio::io::AsyncReadExt;
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("vsock.sock");
        let listener = tokio::net::UnixListener::bind(&uds).unwrap();
        let task = tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            let mut s = BufReader::new(s);
            let Line::Data(connect) = read_line_limited(&mut s, 64).await.unwrap() else {
                panic!()
            };
            s.get_mut().write_all(b"OK 1073741824\n").await.unwrap();
            let Line::Data(h) = read_line_limited(&mut s, 512).await.unwrap() else {
                panic!()
            };
            s.get_mut()
                .write_all(hello::format_ok().as_bytes())
                .await
                .unwrap();
            s.get_mut().write_all(b"engine bytes").await.unwrap();
            (connect, h)
        });
        let mut stream = Carrier::HybridVsock { uds }
            .connect(Service::Engine)
            .await
            .unwrap();
        let mut buf = [0u8; 12];
        stream.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"engine bytes");
        let (connect, h) = task.await.unwrap();
        assert_eq!(connect, b"CONNECT 2375");
        assert_eq!(h, b"RMACHINE 1 engine -");
    }
}
