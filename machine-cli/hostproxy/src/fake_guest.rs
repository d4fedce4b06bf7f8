//! A fake guest for tests: an Engine API (`/containers/json`, `/containers/{id}/json`,
//! a chunked `/events` stream the test writes to) and a dial service that connects
//! every dial of a published port to a local tcp or udp echo server. Streams are
//! in-memory pipes handed out by [`FakeGuest::connector`].

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Bytes, Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rmachine_protocol::dial::{self, frame_datagram, DialRequest, Proto};
use rmachine_protocol::line::{read_line_limited, Line, MAX_HEADER_LINE};
use rmachine_protocol::Service;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, DuplexStream};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;

use crate::connector::{ConnectFuture, GuestConnector, GuestIo};
use crate::forwarder::next_frame;
use crate::port::Transport;

const PATIENCE: Duration = Duration::from_secs(10);

/// A container of the fake engine.
#[derive(Debug, Clone)]
pub struct FakeContainer {
    id: String,
    name: String,
    running: bool,
    ports: Vec<(Transport, String, u16)>,
}

impl FakeContainer {
    pub fn tcp(id: &str, host_ip: &str, host_port: u16) -> FakeContainer {
        FakeContainer {
            id: id.into(),
            name: format!("/{id}"),
            running: true,
            ports: Vec::new(),
        }
        .with_tcp(host_ip, host_port)
    }

    pub fn udp(id: &str, host_ip: &str, host_port: u16) -> FakeContainer {
        FakeContainer {
            id: id.into(),
            name: format!("/{id}"),
            running: true,
            ports: Vec::new(),
        }
        .with_udp(host_ip, host_port)
    }

    pub fn with_tcp(mut self, host_ip: &str, host_port: u16) -> FakeContainer {
        self.ports.push((Transport::Tcp, host_ip.into(), host_port));
        self
    }

    pub fn with_udp(mut self, host_ip: &str, host_port: u16) -> FakeContainer {
        self.ports.push((Transport::Udp, host_ip.into(), host_port));
        self
    }

    pub fn named(mut self, name: &str) -> FakeContainer {
        self.name = name.into();
        self
    }

    fn inspect_json(&self) -> serde_json::Value {
        let mut ports = serde_json::Map::new();
        for (i, (transport, host_ip, host_port)) in self.ports.iter().enumerate() {
            let proto = transport.proto().as_str();
            ports.insert(
                format!("{}/{proto}", 10_000 + i),
                serde_json::json!([{ "HostIp": host_ip, "HostPort": host_port.to_string() }]),
            );
        }
        // An exposed, unpublished port, as Docker reports it.
        ports.insert("9999/tcp".into(), serde_json::Value::Null);
        serde_json::json!({
            "Id": self.id,
            "Name": self.name,
            "State": { "Status": if self.running { "running" } else { "exited" }, "Running": self.running },
            "NetworkSettings": { "Ports": ports, "IPAddress": "172.17.0.2" },
        })
    }
}

#[derive(Default)]
struct State {
    containers: BTreeMap<String, FakeContainer>,
    subscribers: Vec<mpsc::UnboundedSender<Bytes>>,
    events_status: u16,
    event_connects: usize,
    lists: usize,
    inspects: Vec<String>,
    dials: Vec<String>,
    /// Swarm services (`GET /services`): `None` answers 503 as an engine that is not a
    /// swarm manager does; each service is (id, name, its ingress tcp ports).
    services: Option<Vec<(String, String, Vec<u16>)>>,
    /// `GET /services` answers 200 with a body that is not a list.
    services_garbage: bool,
}

struct Inner {
    state: Mutex<State>,
    open_udp_streams: AtomicUsize,
    echo_tcp: SocketAddr,
    echo_udp: SocketAddr,
}

impl Inner {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }
}

/// The fake guest; dropping it does not stop its servers (tests end with the runtime).
#[derive(Clone)]
pub struct FakeGuest {
    inner: Arc<Inner>,
}

impl FakeGuest {
    pub async fn new() -> FakeGuest {
        let echo_tcp = tcp_echo().await;
        let echo_udp = udp_echo().await;
        let state = State {
            events_status: 200,
            ..State::default()
        };
        FakeGuest {
            inner: Arc::new(Inner {
                state: Mutex::new(state),
                open_udp_streams: AtomicUsize::new(0),
                echo_tcp,
                echo_udp,
            }),
        }
    }

    pub fn connector(&self) -> Arc<dyn GuestConnector> {
        Arc::new(FakeConnector {
            inner: Arc::clone(&self.inner),
        })
    }

    pub fn add_container(&self, container: FakeContainer) {
        self.inner
            .state()
            .containers
            .insert(container.id.clone(), container);
    }

    /// Makes the engine a swarm manager with these services (id, name, published tcp
    /// ports), or no manager at all (`None`).
    pub fn set_services(&self, services: Option<Vec<(&str, &str, Vec<u16>)>>) {
        self.inner.state().services = services.map(|list| {
            list.into_iter()
                .map(|(id, name, ports)| (id.to_string(), name.to_string(), ports))
                .collect()
        });
    }

    /// Makes `GET /services` answer 200 with garbage.
    pub fn set_services_garbage(&self, garbage: bool) {
        self.inner.state().services_garbage = garbage;
    }

    pub fn set_running(&self, id: &str, running: bool) {
        if let Some(c) = self.inner.state().containers.get_mut(id) {
            c.running = running;
        }
    }

    /// Writes bytes as one chunk to every open `/events` stream.
    pub fn send_events_raw(&self, bytes: &[u8]) {
        let chunk = Bytes::copy_from_slice(bytes);
        for subscriber in &self.inner.state().subscribers {
            let _ = subscriber.send(chunk.clone());
        }
    }

    /// Ends every open `/events` stream (cleanly, with the last chunk).
    pub fn end_event_streams(&self) {
        self.inner.state().subscribers.clear();
    }

    /// The status `/events` answers with (200 streams events).
    pub fn set_events_status(&self, status: u16) {
        self.inner.state().events_status = status;
    }

    /// How many `/events` requests were made.
    pub fn event_connects(&self) -> usize {
        self.inner.state().event_connects
    }

    /// The ids inspected so far.
    pub fn inspects(&self) -> Vec<String> {
        self.inner.state().inspects.clone()
    }

    /// The dial headers received so far.
    pub fn dials(&self) -> Vec<String> {
        self.inner.state().dials.clone()
    }

    /// Guest udp streams currently open.
    pub fn open_udp_streams(&self) -> usize {
        self.inner.open_udp_streams.load(Ordering::SeqCst)
    }

    /// Waits until `n` `/events` streams are open.
    pub async fn wait_for_event_subscribers(&self, n: usize) {
        self.wait_until(|s| {
            s.subscribers.retain(|tx| !tx.is_closed());
            s.subscribers.len() >= n
        })
        .await;
    }

    /// Waits until the container list was served `n` times (a publisher's resync is
    /// done then, if no container runs).
    pub async fn wait_for_lists(&self, n: usize) {
        self.wait_until(|s| s.lists >= n).await;
    }

    async fn wait_until(&self, mut done: impl FnMut(&mut State) -> bool) {
        let deadline = Instant::now() + PATIENCE;
        while !done(&mut self.inner.state()) {
            assert!(
                Instant::now() < deadline,
                "fake guest: condition not reached in time"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

struct FakeConnector {
    inner: Arc<Inner>,
}

impl GuestConnector for FakeConnector {
    fn connect(&self, service: Service) -> ConnectFuture<'_> {
        let inner = Arc::clone(&self.inner);
        Box::pin(async move {
            let (host_end, guest_end) = tokio::io::duplex(64 * 1024);
            match service {
                Service::Engine => {
                    tokio::spawn(serve_engine(inner, guest_end));
                }
                Service::Dial => {
                    tokio::spawn(serve_dial(inner, guest_end));
                }
                Service::Control | Service::Exec => {
                    return Err(io::Error::from(io::ErrorKind::ConnectionRefused))
                }
            }
            Ok(Box::new(host_end) as Box<dyn GuestIo>)
        })
    }
}

type FakeBody = BoxBody<Bytes, Infallible>;

async fn serve_engine(inner: Arc<Inner>, stream: DuplexStream) {
    let service = hyper::service::service_fn(move |request| {
        let inner = Arc::clone(&inner);
        async move { Ok::<_, Infallible>(handle_engine(&inner, request)) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

fn json_response(status: StatusCode, value: serde_json::Value) -> Response<FakeBody> {
    let mut response = Response::new(Full::new(Bytes::from(value.to_string())).boxed());
    *response.status_mut() = status;
    response
}

fn handle_engine(inner: &Inner, request: Request<Incoming>) -> Response<FakeBody> {
    let path = request.uri().path().to_string();
    let mut state = inner.state();
    if path == "/containers/json" {
        state.lists += 1;
        let list: Vec<serde_json::Value> = state
            .containers
            .values()
            .filter(|c| c.running)
            .map(|c| serde_json::json!({ "Id": c.id, "Names": [c.name], "State": "running" }))
            .collect();
        return json_response(StatusCode::OK, serde_json::Value::Array(list));
    }
    if path == "/services" && state.services_garbage {
        return json_response(StatusCode::OK, serde_json::json!({ "not": "a list" }));
    }
    if path == "/services" {
        let Some(services) = &state.services else {
            return json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                serde_json::json!({ "message": "This node is not a swarm manager." }),
            );
        };
        let list: Vec<serde_json::Value> = services
            .iter()
            .map(|(id, name, ports)| {
                let ports: Vec<serde_json::Value> = ports
                    .iter()
                    .map(|p| serde_json::json!({ "Protocol": "tcp", "TargetPort": 80, "PublishedPort": p, "PublishMode": "ingress" }))
                    .collect();
                serde_json::json!({ "ID": id, "Spec": { "Name": name }, "Endpoint": { "Ports": ports } })
            })
            .collect();
        return json_response(StatusCode::OK, serde_json::Value::Array(list));
    }
    if path == "/events" {
        state.event_connects += 1;
        if state.events_status != 200 {
            let status = StatusCode::from_u16(state.events_status)
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return json_response(
                status,
                serde_json::json!({ "message": "events unavailable" }),
            );
        }
        let (tx, rx) = mpsc::unbounded_channel();
        state.subscribers.push(tx);
        return Response::new(ChannelBody(rx).boxed());
    }
    if let Some(id) = path
        .strip_prefix("/containers/")
        .and_then(|rest| rest.strip_suffix("/json"))
    {
        state.inspects.push(id.to_string());
        return match state.containers.get(id) {
            Some(c) => json_response(StatusCode::OK, c.inspect_json()),
            None => json_response(
                StatusCode::NOT_FOUND,
                serde_json::json!({ "message": format!("No such container: {id}") }),
            ),
        };
    }
    json_response(
        StatusCode::NOT_FOUND,
        serde_json::json!({ "message": "page not found" }),
    )
}

/// A streaming body fed by the test.
struct ChannelBody(mpsc::UnboundedReceiver<Bytes>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|c| Ok(Frame::data(c))))
    }
}

async fn serve_dial(inner: Arc<Inner>, stream: DuplexStream) {
    let mut stream = BufReader::new(stream);
    let Ok(Line::Data(header)) = read_line_limited(&mut stream, MAX_HEADER_LINE).await else {
        return;
    };
    inner
        .state()
        .dials
        .push(String::from_utf8_lossy(&header).into_owned());
    let request = match DialRequest::parse(&header) {
        Ok(request) => request,
        Err(err) => {
            let _ = stream
                .get_mut()
                .write_all(dial::format_answer(Err(&err.to_string())).as_bytes())
                .await;
            return;
        }
    };
    let transport = match request.proto {
        Proto::Tcp => Transport::Tcp,
        Proto::Udp => Transport::Udp,
    };
    let published = {
        let state = inner.state();
        let by_service = transport == Transport::Tcp
            && (state.services.iter().flatten())
                .any(|(_, _, ports)| ports.contains(&request.guest_port));
        by_service
            || state.containers.values().any(|c| {
                c.running
                    && c.ports
                        .iter()
                        .any(|(t, _, port)| *t == transport && *port == request.guest_port)
            })
    };
    if !published {
        let _ = stream
            .get_mut()
            .write_all(dial::format_answer(Err("connection refused")).as_bytes())
            .await;
        return;
    }
    match request.proto {
        Proto::Tcp => {
            let Ok(mut echo) = TcpStream::connect(inner.echo_tcp).await else {
                return;
            };
            if stream
                .get_mut()
                .write_all(dial::format_answer(Ok(())).as_bytes())
                .await
                .is_ok()
            {
                let _ = tokio::io::copy_bidirectional(&mut stream, &mut echo).await;
            }
        }
        Proto::Udp => {
            let Ok(socket) = UdpSocket::bind("127.0.0.1:0").await else {
                return;
            };
            if socket.connect(inner.echo_udp).await.is_err() {
                return;
            }
            if stream
                .get_mut()
                .write_all(dial::format_answer(Ok(())).as_bytes())
                .await
                .is_err()
            {
                return;
            }
            inner.open_udp_streams.fetch_add(1, Ordering::SeqCst);
            let mut pending = Vec::new();
            let mut read_buf = vec![0u8; 70_000];
            let mut datagram = vec![0u8; 70_000];
            loop {
                tokio::select! {
                    read = stream.read(&mut read_buf) => {
                        let Ok(n @ 1..) = read else { break };
                        pending.extend_from_slice(&read_buf[..n]);
                        while let Some(payload) = next_frame(&mut pending) {
                            let _ = socket.send(&payload).await;
                        }
                    }
                    received = socket.recv(&mut datagram) => {
                        let Ok(n) = received else { break };
                        let Some(frame) = frame_datagram(&datagram[..n]) else { continue };
                        if stream.get_mut().write_all(&frame).await.is_err() {
                            break;
                        }
                    }
                }
            }
            inner.open_udp_streams.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

async fn tcp_echo() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

async fn udp_echo() -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 70_000];
        while let Ok((n, peer)) = socket.recv_from(&mut buf).await {
            let _ = socket.send_to(&buf[..n], peer).await;
        }
    });
    addr
}
