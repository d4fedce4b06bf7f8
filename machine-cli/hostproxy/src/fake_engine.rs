//! A fake guest engine for the Engine API proxy's tests: a hyper server on in-memory
//! pipes, handed out by [`FakeEngine::connector`]. It records what reached it, streams
//! chunks the test sends, accepts upgrades (then greets, echoes, and says `bye` after
//! the client's half-close) and can hang up a connection without a word.

use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Bytes, Frame, Incoming};
use hyper::{header, Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rmachine_protocol::Service;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::{mpsc, Notify};

use crate::connector::{ConnectFuture, GuestConnector, GuestIo};

const PATIENCE: Duration = Duration::from_secs(10);

/// A `POST /containers/create` as the engine received it.
#[derive(Debug, Clone)]
pub struct CreateRecord {
    /// Path and query.
    pub path: String,
    pub content_length: Option<usize>,
    pub body: Bytes,
}

#[derive(Default)]
struct State {
    creates: Vec<CreateRecord>,
    requests: Vec<String>,
    streams: Vec<mpsc::UnboundedSender<Bytes>>,
    upgrade_input: Vec<u8>,
}

#[derive(Default)]
struct Inner {
    state: Mutex<State>,
    connections: AtomicUsize,
    open: AtomicUsize,
}

impl Inner {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }
}

#[derive(Clone, Default)]
pub struct FakeEngine {
    inner: Arc<Inner>,
}

impl FakeEngine {
    pub fn new() -> FakeEngine {
        FakeEngine::default()
    }

    pub fn connector(&self) -> Arc<dyn GuestConnector> {
        Arc::new(FakeConnector {
            inner: Arc::clone(&self.inner),
        })
    }

    pub fn creates(&self) -> Vec<CreateRecord> {
        self.inner.state().creates.clone()
    }

    /// `METHOD path` of every request, in order.
    pub fn requests(&self) -> Vec<String> {
        self.inner.state().requests.clone()
    }

    /// Connections opened so far.
    pub fn connections(&self) -> usize {
        self.inner.connections.load(Ordering::SeqCst)
    }

    /// Connections open now.
    pub fn open_connections(&self) -> usize {
        self.inner.open.load(Ordering::SeqCst)
    }

    /// What upgraded connections received.
    pub fn upgrade_input(&self) -> Vec<u8> {
        self.inner.state().upgrade_input.clone()
    }

    /// Sends one chunk on every open streaming answer (logs, events).
    pub fn stream_chunk(&self, chunk: &'static str) {
        for stream in &self.inner.state().streams {
            let _ = stream.send(Bytes::from_static(chunk.as_bytes()));
        }
    }

    /// Ends every streaming answer.
    pub fn end_stream(&self) {
        self.inner.state().streams.clear();
    }

    pub async fn wait_for_open_connections(&self, n: usize) {
        let deadline = Instant::now() + PATIENCE;
        while self.open_connections() != n {
            assert!(
                Instant::now() < deadline,
                "fake engine: {} connections open, not {n}",
                self.open_connections()
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
            if service != Service::Engine {
                return Err(io::Error::from(io::ErrorKind::ConnectionRefused));
            }
            let (host_end, guest_end) = tokio::io::duplex(64 * 1024);
            inner.connections.fetch_add(1, Ordering::SeqCst);
            inner.open.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(serve(inner, guest_end));
            Ok(Box::new(host_end) as Box<dyn GuestIo>)
        })
    }
}

/// A guest whose engine service refuses every connection.
pub struct UnreachableConnector;

impl GuestConnector for UnreachableConnector {
    fn connect(&self, _service: Service) -> ConnectFuture<'_> {
        Box::pin(async {
            Err(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                "connection refused by the fake guest",
            ))
        })
    }
}

type FakeBody = BoxBody<Bytes, Infallible>;

async fn serve(inner: Arc<Inner>, stream: DuplexStream) {
    let hangup = Arc::new(Notify::new());
    let service = hyper::service::service_fn({
        let inner = Arc::clone(&inner);
        let hangup = Arc::clone(&hangup);
        move |request| {
            let inner = Arc::clone(&inner);
            let hangup = Arc::clone(&hangup);
            async move { Ok::<_, Infallible>(handle(&inner, &hangup, request).await) }
        }
    });
    // Like dockerd (Go): header names in canonical case, and a limit on the size of
    // headers, not their number.
    let conn = hyper::server::conn::http1::Builder::new()
        .title_case_headers(true)
        .max_headers(4096)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        _ = &mut conn => {}
        _ = hangup.notified() => {
            // Let the answer out, then drop the connection without `Connection: close`.
            let _ = tokio::time::timeout(Duration::from_millis(50), &mut conn).await;
        }
    }
    inner.open.fetch_sub(1, Ordering::SeqCst);
}

fn json_response(status: StatusCode, value: serde_json::Value) -> Response<FakeBody> {
    let mut response = Response::new(Full::new(Bytes::from(value.to_string())).boxed());
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

async fn handle(
    inner: &Arc<Inner>,
    hangup: &Notify,
    mut request: Request<Incoming>,
) -> Response<FakeBody> {
    let path = request.uri().path().to_string();
    inner
        .state()
        .requests
        .push(format!("{} {path}", request.method()));
    let unversioned = match path.strip_prefix("/v1.") {
        Some(rest) => rest
            .split_once('/')
            .map(|(_, p)| format!("/{p}"))
            .unwrap_or_default(),
        None => path.clone(),
    };
    match (request.method().clone(), unversioned.as_str()) {
        (Method::GET | Method::HEAD, "/_ping") => {
            let mut response = Response::new(Full::new(Bytes::from_static(b"OK")).boxed());
            let headers = response.headers_mut();
            headers.insert("Api-Version", header::HeaderValue::from_static("1.45"));
            headers.insert("Ostype", header::HeaderValue::from_static("linux"));
            headers.insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            response
        }
        (Method::POST, "/containers/create") => {
            let content_length = request
                .headers()
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok());
            let path = request
                .uri()
                .path_and_query()
                .map(|p| p.to_string())
                .unwrap_or_default();
            let body = request.into_body().collect().await.unwrap().to_bytes();
            inner.state().creates.push(CreateRecord {
                path,
                content_length,
                body,
            });
            json_response(
                StatusCode::CREATED,
                serde_json::json!({"Id": "c0ffee", "Warnings": []}),
            )
        }
        (Method::POST, "/images/load") => {
            let mut body = request.into_body();
            let mut received = 0usize;
            while let Some(frame) = body.frame().await {
                if let Ok(data) = frame.unwrap().into_data() {
                    received += data.len();
                }
            }
            json_response(StatusCode::OK, serde_json::json!({"received": received}))
        }
        (Method::GET, "/events" | "/containers/web/logs") => {
            let (tx, rx) = mpsc::unbounded_channel();
            inner.state().streams.push(tx);
            Response::new(ChannelBody(rx).boxed())
        }
        (Method::POST, "/exec/abc/start") => {
            let on_upgrade = hyper::upgrade::on(&mut request);
            let _ = request.into_body().collect().await;
            let inner = Arc::clone(inner);
            tokio::spawn(async move {
                let Ok(upgraded) = on_upgrade.await else {
                    return;
                };
                let mut stream = TokioIo::new(upgraded);
                if stream.write_all(b"engine>").await.is_err() {
                    return;
                }
                let mut buf = [0u8; 4096];
                loop {
                    match stream.read(&mut buf).await {
                        Ok(0) => break,
                        Ok(n) => {
                            inner.state().upgrade_input.extend_from_slice(&buf[..n]);
                            if stream.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                        Err(_) => return,
                    }
                }
                let _ = stream.write_all(b"bye\n").await;
                let _ = stream.shutdown().await;
            });
            let mut response = Response::new(Full::new(Bytes::new()).boxed());
            *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            let headers = response.headers_mut();
            headers.insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/vnd.docker.raw-stream"),
            );
            headers.insert(
                header::CONNECTION,
                header::HeaderValue::from_static("Upgrade"),
            );
            headers.insert(header::UPGRADE, header::HeaderValue::from_static("tcp"));
            response
        }
        (Method::GET, "/close") => {
            let mut response = json_response(StatusCode::OK, serde_json::json!({}));
            response.headers_mut().insert(
                header::CONNECTION,
                header::HeaderValue::from_static("close"),
            );
            response
        }
        (Method::GET, "/hangup") => {
            hangup.notify_one();
            json_response(StatusCode::OK, serde_json::json!({}))
        }
        _ => json_response(
            StatusCode::NOT_FOUND,
            serde_json::json!({"message": "page not found"}),
        ),
    }
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
