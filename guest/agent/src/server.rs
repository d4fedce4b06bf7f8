//! The listeners of the guest services and the hello line that opens every connection.
//!
//! Each service listens on its vsock port (when the guest has `/dev/vsock`) and, when
//! the config disk gave a token, on the same TCP port. A connection's first line is the
//! host's hello; it must name the service of the port it came to, the protocol version
//! of this agent, and on TCP the machine's token. Anything else gets an `ERR` line and
//! the connection is closed.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rmachine_protocol::hello::{format_err, format_ok, parse_hello, token_matches, HelloError};
use rmachine_protocol::line::{read_line_limited, Line, MAX_HEADER_LINE};
use rmachine_protocol::Service;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_vsock::{VsockAddr, VsockListener, VMADDR_CID_ANY};
use tracing::{debug, warn};

use crate::clock::ClockControl;
use crate::hosts::HostsFile;
use crate::rate_limit::RateLimit;
use crate::reaper::Reaper;
use crate::shutdown::ShutdownRequest;
use crate::status::Status;
use crate::{control, dial, exec, proxy};

/// How long a peer may take to send its hello line.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// A connected byte stream of any carrier.
pub trait Conn: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Conn for T {}

/// A connection after the hello: the buffer holds whatever the host sent after its hello
/// line, so nothing sent ahead of the agent's answer is lost.
pub type Stream = BufReader<Box<dyn Conn>>;

/// The carrier a connection came by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Carrier {
    /// Authenticated by the VMM: no token needed.
    Vsock,
    /// Reachable by anyone who can reach the port: the token is required.
    Tcp,
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on vsock port {port}")]
    Vsock {
        port: u16,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot listen on tcp {addr}")]
    Tcp {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// What every connection handler needs.
pub struct Context {
    /// The token TCP connections must present; `None` refuses every TCP connection.
    pub token: Option<String>,
    /// The engine's socket, spliced to by the engine service.
    pub docker_sock: PathBuf,
    pub status: Arc<Status>,
    pub clock: ClockControl,
    /// Where the control service sends a shutdown request.
    pub shutdown: mpsc::Sender<ShutdownRequest>,
    /// Starts and waits for the exec service's commands.
    pub reaper: Reaper,
    /// Guest paths of the shared folders (where host change notifications may touch).
    pub shares: Vec<PathBuf>,
    /// The hosts file `set_hosts` rewrites; `None` refuses it (serve mode).
    pub hosts: Option<Arc<HostsFile>>,
    refusal_log: RateLimit,
    refused: AtomicU64,
}

impl Context {
    pub fn new(
        token: Option<String>,
        docker_sock: PathBuf,
        status: Arc<Status>,
        clock: ClockControl,
        shutdown: mpsc::Sender<ShutdownRequest>,
        reaper: Reaper,
    ) -> Context {
        Context {
            token,
            docker_sock,
            status,
            clock,
            shutdown,
            reaper,
            shares: Vec::new(),
            hosts: None,
            refusal_log: RateLimit::new(10, Duration::from_secs(60)),
            refused: AtomicU64::new(0),
        }
    }

    /// The same context knowing the shared folders' guest paths.
    pub fn with_shares(mut self, shares: Vec<PathBuf>) -> Context {
        self.shares = shares;
        self
    }

    /// The same context managing this hosts file.
    pub fn with_hosts(mut self, hosts: Arc<HostsFile>) -> Context {
        self.hosts = Some(hosts);
        self
    }

    /// How many connections were refused for a missing or wrong token.
    #[cfg(test)]
    pub fn refused_connections(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

/// Why a hello was refused: the message for the `ERR` line.
#[derive(Debug, PartialEq, Eq)]
pub struct Refusal {
    pub message: String,
    pub wrong_token: bool,
}

/// Checks a hello line for a connection to `service` by `carrier`.
pub fn check_hello(
    line: &[u8],
    service: Service,
    carrier: Carrier,
    token: Option<&str>,
) -> Result<(), Refusal> {
    let refuse = |message: String| Refusal {
        message,
        wrong_token: false,
    };
    let hello = parse_hello(line).map_err(|e| match e {
        HelloError::NotHello => refuse("not an rmachine hello line".into()),
        other => refuse(other.to_string()),
    })?;
    if hello.service != service {
        return Err(refuse(format!(
            "this port serves {service}, not {}",
            hello.service
        )));
    }
    if carrier == Carrier::Tcp {
        let accepted = match (token, hello.token.as_deref()) {
            (Some(expected), Some(given)) => token_matches(expected, given),
            _ => false,
        };
        if !accepted {
            return Err(Refusal {
                message: "wrong token".into(),
                wrong_token: true,
            });
        }
    }
    Ok(())
}

/// Listens on the service's vsock port (any CID) and serves it until the runtime ends.
pub fn listen_vsock(service: Service, ctx: Arc<Context>) -> Result<JoinHandle<()>, ServerError> {
    let port = service.port();
    let listener = VsockListener::bind(VsockAddr::new(VMADDR_CID_ANY, u32::from(port)))
        .map_err(|source| ServerError::Vsock { port, source })?;
    Ok(tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, peer)) => {
                    let peer = format!("vsock:{}:{}", peer.cid(), peer.port());
                    tokio::spawn(handle(
                        Box::new(stream),
                        Carrier::Vsock,
                        peer,
                        service,
                        ctx.clone(),
                    ));
                }
                Err(e) => accept_failed(service, &e).await,
            }
        }
    }))
}

/// Listens on a TCP address and serves the service there; returns the bound address.
pub async fn listen_tcp(
    addr: SocketAddr,
    service: Service,
    ctx: Arc<Context>,
) -> Result<(SocketAddr, JoinHandle<()>), ServerError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Tcp { addr, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| ServerError::Tcp { addr, source })?;
    let task = tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, peer)) => {
                    // Control requests are small: send them at once.
                    let _ = stream.set_nodelay(true);
                    tokio::spawn(handle(
                        Box::new(stream),
                        Carrier::Tcp,
                        peer.to_string(),
                        service,
                        ctx.clone(),
                    ));
                }
                Err(e) => accept_failed(service, &e).await,
            }
        }
    });
    Ok((local, task))
}

static ACCEPT_ERRORS: RateLimit = RateLimit::new(5, Duration::from_secs(60));

async fn accept_failed(service: Service, error: &std::io::Error) {
    if ACCEPT_ERRORS.check().is_some() {
        warn!(%service, %error, "accept failed");
    }
    // Out of descriptors, most likely: give connections time to close.
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// Serves one connection: the hello, then the service.
pub async fn handle(
    conn: Box<dyn Conn>,
    carrier: Carrier,
    peer: String,
    service: Service,
    ctx: Arc<Context>,
) {
    let mut stream: Stream = BufReader::new(conn);
    let line = match tokio::time::timeout(
        HELLO_TIMEOUT,
        read_line_limited(&mut stream, MAX_HEADER_LINE),
    )
    .await
    {
        Ok(Ok(Line::Data(line))) => line,
        Ok(Ok(Line::TooLong { len })) => {
            let _ = send(
                &mut stream,
                &format_err(&format!("hello line of {len} bytes is too long")),
            )
            .await;
            return;
        }
        Ok(Ok(Line::Eof)) => return,
        Ok(Err(e)) => {
            debug!(%peer, %service, error = %e, "connection failed before its hello");
            return;
        }
        Err(_) => {
            debug!(%peer, %service, "no hello within {HELLO_TIMEOUT:?}");
            return;
        }
    };
    if let Err(refusal) = check_hello(&line, service, carrier, ctx.token.as_deref()) {
        if refusal.wrong_token {
            ctx.refused.fetch_add(1, Ordering::Relaxed);
            if let Some(suppressed) = ctx.refusal_log.check() {
                warn!(%peer, %service, suppressed, "refused connection: wrong token");
            }
        } else {
            debug!(%peer, %service, reason = %refusal.message, "refused connection");
        }
        let _ = send(&mut stream, &format_err(&refusal.message)).await;
        let _ = stream.get_mut().shutdown().await;
        return;
    }
    debug!(%peer, %service, "connection accepted");
    let result = match service {
        Service::Control => match send(&mut stream, &format_ok()).await {
            Ok(()) => control::serve(&mut stream, &ctx).await,
            Err(e) => Err(e),
        },
        Service::Dial => match send(&mut stream, &format_ok()).await {
            Ok(()) => dial::serve(&mut stream).await,
            Err(e) => Err(e),
        },
        Service::Exec => match send(&mut stream, &format_ok()).await {
            Ok(()) => exec::serve(&mut stream, &ctx).await,
            Err(e) => Err(e),
        },
        // The engine service answers the hello itself, once it knows the engine is up.
        Service::Engine => proxy::serve(&mut stream, &ctx).await,
    };
    match result {
        Ok(()) => debug!(%peer, %service, "connection closed"),
        Err(e) => debug!(%peer, %service, error = %e, "connection ended"),
    }
}

/// Writes a line and flushes it.
pub async fn send(stream: &mut Stream, line: &str) -> std::io::Result<()> {
    stream.write_all(line.as_bytes()).await?;
    stream.flush().await
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rmachine_protocol::hello::{format_hello, parse_answer};
    use rmachine_protocol::PROTOCOL_VERSION;
    use tokio::io::{AsyncBufReadExt, AsyncReadExt};
    use tokio::net::TcpStream;

    pub(crate) struct TestServer {
        pub addrs: Vec<(Service, SocketAddr)>,
        pub ctx: Arc<Context>,
        pub shutdown: mpsc::Receiver<ShutdownRequest>,
    }

    impl TestServer {
        pub(crate) fn addr(&self, service: Service) -> SocketAddr {
            self.addrs
                .iter()
                .find(|(s, _)| *s == service)
                .map(|(_, a)| *a)
                .unwrap()
        }
    }

    /// Serves every service on loopback with token "secret" and one shared folder (`share`
    /// beside `docker_sock`), with a reaper that does not reap (tests that start commands use [`start_server_with`] and a started one).
    pub(crate) async fn start_server(docker_sock: PathBuf) -> TestServer {
        start_server_with(docker_sock, Reaper::default()).await
    }

    pub(crate) async fn start_server_with(docker_sock: PathBuf, reaper: Reaper) -> TestServer {
        let (tx, rx) = mpsc::channel(4);
        let status = Arc::new(Status::new("test"));
        // A shared folder beside the engine socket, for change notifications.
        let share = docker_sock.with_file_name("share");
        // The hosts file `set_hosts` writes, beside it too.
        let hosts = docker_sock.with_file_name("hosts");
        let ctx = Arc::new(
            Context::new(
                Some("secret".into()),
                docker_sock,
                status,
                ClockControl::Observe,
                tx,
                reaper,
            )
            .with_shares(vec![share])
            .with_hosts(Arc::new(HostsFile::new(hosts, "test", Vec::new()))),
        );
        let mut addrs = Vec::new();
        for service in Service::ALL {
            let (addr, _) = listen_tcp("127.0.0.1:0".parse().unwrap(), service, ctx.clone())
                .await
                .unwrap();
            addrs.push((service, addr));
        }
        TestServer {
            addrs,
            ctx,
            shutdown: rx,
        }
    }

    /// Connects, sends `hello`, and returns the stream and the answer line.
    pub(crate) async fn connect_with(
        addr: SocketAddr,
        hello: &str,
    ) -> (BufReader<TcpStream>, String) {
        let mut stream = BufReader::new(TcpStream::connect(addr).await.unwrap());
        stream.get_mut().write_all(hello.as_bytes()).await.unwrap();
        let mut answer = String::new();
        stream.read_line(&mut answer).await.unwrap();
        (stream, answer)
    }

    /// Connects with a valid hello for `service` and checks the OK.
    pub(crate) async fn connect(server: &TestServer, service: Service) -> BufReader<TcpStream> {
        let (stream, answer) =
            connect_with(server.addr(service), &format_hello(service, Some("secret"))).await;
        assert_eq!(answer, format_ok());
        stream
    }

    async fn assert_closed(stream: &mut BufReader<TcpStream>) {
        let mut rest = Vec::new();
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(n, 0, "unexpected bytes after refusal: {rest:?}");
    }

    #[test]
    fn test_check_hello_rules() {
        let hello = |service, token| format_hello(service, token).trim_end().to_string();
        let ok = check_hello(
            hello(Service::Control, Some("t")).as_bytes(),
            Service::Control,
            Carrier::Tcp,
            Some("t"),
        );
        assert_eq!(ok, Ok(()));
        // vsock needs no token.
        let ok = check_hello(
            hello(Service::Dial, None).as_bytes(),
            Service::Dial,
            Carrier::Vsock,
            None,
        );
        assert_eq!(ok, Ok(()));
        // TCP without a configured token refuses everything.
        let err = check_hello(
            hello(Service::Dial, Some("t")).as_bytes(),
            Service::Dial,
            Carrier::Tcp,
            None,
        )
        .unwrap_err();
        assert!(err.wrong_token);
        let err = check_hello(
            hello(Service::Dial, None).as_bytes(),
            Service::Dial,
            Carrier::Tcp,
            Some("t"),
        )
        .unwrap_err();
        assert!(err.wrong_token);
        let err = check_hello(
            hello(Service::Engine, None).as_bytes(),
            Service::Control,
            Carrier::Vsock,
            None,
        )
        .unwrap_err();
        assert_eq!(err.message, "this port serves control, not engine");
        let err =
            check_hello(b"GET / HTTP/1.1", Service::Control, Carrier::Vsock, None).unwrap_err();
        assert_eq!(err.message, "not an rmachine hello line");
    }

    /// A writer that collects log output for one test (current-thread runtime: every
    /// task runs on the thread that holds the default subscriber).
    #[derive(Clone, Default)]
    struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
        type Writer = Captured;
        fn make_writer(&'a self) -> Captured {
            self.clone()
        }
    }

    #[tokio::test]
    async fn test_wrong_token_is_refused_logged_and_closed() {
        let captured = Captured::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(captured.clone())
            .with_ansi(false)
            .finish();
        let _default = tracing::subscriber::set_default(subscriber);
        let dir = tempfile::tempdir().unwrap();
        let server = start_server(dir.path().join("docker.sock")).await;
        for service in Service::ALL {
            let (mut stream, answer) =
                connect_with(server.addr(service), &format_hello(service, Some("guess"))).await;
            assert_eq!(answer, format_err("wrong token"));
            assert!(parse_answer(answer.trim_end().as_bytes()).is_err());
            assert_closed(&mut stream).await;
        }
        // No token at all on TCP is the same.
        let (mut stream, answer) = connect_with(
            server.addr(Service::Control),
            &format_hello(Service::Control, None),
        )
        .await;
        assert_eq!(answer, format_err("wrong token"));
        assert_closed(&mut stream).await;
        assert_eq!(
            server.ctx.refused_connections(),
            Service::ALL.len() as u64 + 1
        );
        let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        assert!(log.contains("refused connection: wrong token"), "{log}");
        let local = server.addr(Service::Control);
        assert!(log.contains(&format!("peer={}", local.ip())), "{log}");
    }

    #[tokio::test]
    async fn test_wrong_service_and_garbage_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let server = start_server(dir.path().join("docker.sock")).await;
        let (mut stream, answer) = connect_with(
            server.addr(Service::Control),
            &format_hello(Service::Dial, Some("secret")),
        )
        .await;
        assert_eq!(answer, format_err("this port serves control, not dial"));
        assert_closed(&mut stream).await;
        let (mut stream, answer) =
            connect_with(server.addr(Service::Dial), "GET / HTTP/1.1\r\n\r\n").await;
        assert_eq!(answer, format_err("not an rmachine hello line"));
        assert_closed(&mut stream).await;
        let long = format!("{}\n", "x".repeat(MAX_HEADER_LINE + 1));
        let (_, answer) = connect_with(server.addr(Service::Dial), &long).await;
        assert!(
            answer.starts_with("ERR 1 hello line of 513 bytes"),
            "{answer}"
        );
        // A wrong service is not a token problem.
        assert_eq!(server.ctx.refused_connections(), 0);
    }

    #[tokio::test]
    async fn test_other_protocol_version_names_both_versions() {
        let dir = tempfile::tempdir().unwrap();
        let server = start_server(dir.path().join("docker.sock")).await;
        let other = PROTOCOL_VERSION + 1;
        let (mut stream, answer) = connect_with(
            server.addr(Service::Control),
            &format!("RMACHINE {other} control secret\n"),
        )
        .await;
        let message =
            format!("host speaks protocol version {other}, this agent speaks {PROTOCOL_VERSION}");
        assert_eq!(answer, format_err(&message));
        assert_closed(&mut stream).await;
    }

    #[tokio::test]
    async fn test_right_token_is_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let server = start_server(dir.path().join("docker.sock")).await;
        let stream = connect(&server, Service::Control).await;
        drop(stream);
        assert_eq!(server.ctx.refused_connections(), 0);
    }
}
