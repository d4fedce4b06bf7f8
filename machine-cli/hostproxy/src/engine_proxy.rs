//! The Engine API on `<machine>/docker.sock`: an HTTP/1.1 proxy to the guest's engine
//! service that lets every request of the docker CLI, compose and buildx through
//! untouched, except `POST /containers/create`, whose body a [`CreatePolicy`] reviews
//! first.
//!
//! Each client connection gets one guest connection, opened at its first request and
//! reopened if the engine closed it between requests. Bodies stream both ways (build
//! contexts, `docker load`, `logs -f`, `/events`); only the create body is read whole,
//! up to [`MAX_CREATE_BODY`]. An upgrade the engine accepts (attach, `exec -it`,
//! BuildKit's `/session` and `/grpc`) turns both connections into one raw byte splice,
//! half-closes included. When the engine cannot be reached, the client gets a `502`
//! with a JSON message, which the docker CLI prints.

use std::convert::Infallible;
use std::error::Error as StdError;
use std::io;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use http_body_util::{BodyExt, Either, Full};
use hyper::body::{Body, Bytes, Incoming};
use hyper::client::conn::http1::{self as client_http1, SendRequest};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::server::conn::http1 as server_http1;
use hyper::upgrade::OnUpgrade;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rmachine_machine::sys::local_socket::LocalListener;
use rmachine_protocol::Service;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::connector::GuestConnector;
use crate::create_policy::CreatePolicy;

/// Largest `POST /containers/create` body read; a larger one is answered with `413`.
pub const MAX_CREATE_BODY: usize = 16 * 1024 * 1024;

/// How much of an oversized create body is read (and dropped) before answering `413`.
const MAX_CREATE_DRAIN: usize = 4 * MAX_CREATE_BODY;

/// Most headers in one message (hyper's default is 100; BuildKit's `/session` sends a
/// header per exposed gRPC method).
const MAX_HEADERS: usize = 1024;

/// How long reaching the guest's engine service may take (waiting behind a burst of
/// other connects included).
const CONNECT_TIMEOUT: Duration = rmachine_machine::guest_link::CONNECT_DEADLINE;

/// The body of a request to the engine or of an answer to the client: passed through,
/// or made here (a reviewed create body, an error).
type ProxyBody = Either<Incoming, Full<Bytes>>;

/// Why a request could not be passed to the engine.
#[derive(Debug, thiserror::Error)]
enum ProxyError {
    #[error("cannot connect to the guest's engine service")]
    Connect(#[source] io::Error),
    #[error("timed out after {CONNECT_TIMEOUT:?} connecting to the guest's engine service")]
    ConnectTimeout,
    #[error("http handshake with the engine failed")]
    Handshake(#[source] hyper::Error),
    #[error("the engine connection failed")]
    Send(#[source] hyper::Error),
}

/// Why the machine's VM is paused (its host disk is full), or `None` while it runs: a
/// request that arrives while paused is answered at once with the reason (503) instead
/// of waiting on a VM that cannot answer; requests already sent wait for it to continue.
pub type Paused = tokio::sync::watch::Receiver<Option<String>>;

/// A [`Paused`] that never pauses (a machine whose VM is not watched, an ssh machine).
pub fn never_paused() -> Paused {
    tokio::sync::watch::channel(None).1
}

/// Serves the Engine API on `listener` until the returned future is dropped (which
/// also ends the connections it accepted), forwarding to the engine service that
/// `connector` reaches and reviewing container creations with `policy`. `machine`
/// names the machine in error messages; while `paused` holds a reason, new requests are
/// answered with it.
pub async fn serve_engine(
    mut listener: LocalListener,
    machine: String,
    connector: Arc<dyn GuestConnector>,
    policy: Arc<dyn CreatePolicy>,
    paused: Paused,
) {
    let proxy = Arc::new(Proxy {
        machine,
        connector,
        policy,
        paused,
    });
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(stream) => {
                    connections.spawn(Arc::clone(&proxy).serve_connection(stream));
                }
                Err(err) => {
                    warn!(error = %err, "accept failed on the engine socket");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

struct Proxy {
    machine: String,
    connector: Arc<dyn GuestConnector>,
    policy: Arc<dyn CreatePolicy>,
    paused: Paused,
}

/// Both ends of an accepted upgrade, waiting for their connections to let go.
struct PendingUpgrade {
    client: OnUpgrade,
    guest: OnUpgrade,
}

/// One client connection.
struct Session {
    proxy: Arc<Proxy>,
    /// The guest connection, once opened; `None` again after it broke or upgraded.
    guest: tokio::sync::Mutex<Option<SendRequest<ProxyBody>>>,
    upgrade: Mutex<Option<PendingUpgrade>>,
}

impl Proxy {
    async fn serve_connection<I>(self: Arc<Self>, io: I)
    where
        I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let session = Arc::new(Session {
            proxy: self,
            guest: tokio::sync::Mutex::new(None),
            upgrade: Mutex::new(None),
        });
        let service = hyper::service::service_fn({
            let session = Arc::clone(&session);
            move |request| {
                let session = Arc::clone(&session);
                async move { Ok::<_, Infallible>(session.handle(request).await) }
            }
        });
        // No HTTP half-close: a client that goes away while its answer streams (Ctrl-C on
        // `logs -f` or `events`) must free the guest's stream at once, not at the next
        // chunk. Upgraded streams still pass half-closes (`docker run -i` at stdin's end).
        let served = server_http1::Builder::new()
            .half_close(false)
            .preserve_header_case(true)
            .max_headers(MAX_HEADERS)
            .serve_connection(TokioIo::new(io), service)
            .with_upgrades()
            .await;
        if let Err(err) = served {
            debug!(error = %err, "engine api client connection ended");
        }
        let pending = session
            .upgrade
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(pending) = pending {
            splice(pending).await;
        }
    }

    /// A new connection to the engine, driven by a task of its own that ends when the
    /// sender is dropped (or hands the stream over on an upgrade).
    async fn connect(&self) -> Result<SendRequest<ProxyBody>, ProxyError> {
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, self.connector.connect(Service::Engine))
            .await
            .map_err(|_| ProxyError::ConnectTimeout)?
            .map_err(ProxyError::Connect)?;
        let (sender, conn) = client_http1::Builder::new()
            .preserve_header_case(true)
            .max_headers(MAX_HEADERS)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(ProxyError::Handshake)?;
        tokio::spawn(async move {
            if let Err(err) = conn.with_upgrades().await {
                debug!(error = %err, "engine connection ended");
            }
        });
        Ok(sender)
    }

    /// The answer when the engine cannot be reached.
    fn unreachable(&self, err: &ProxyError) -> Response<ProxyBody> {
        let message = format!(
            "rmachine: cannot reach the engine of machine \"{}\": {}",
            self.machine,
            error_chain(err)
        );
        warn!(machine = %self.machine, error = %message, "engine unreachable");
        error_response(StatusCode::BAD_GATEWAY, &message)
    }
}

impl Session {
    async fn handle(&self, mut request: Request<Incoming>) -> Response<ProxyBody> {
        let paused = self.proxy.paused.borrow().clone();
        if let Some(reason) = paused {
            let message = format!("rmachine: machine \"{}\": {reason}", self.proxy.machine);
            return error_response(StatusCode::SERVICE_UNAVAILABLE, &message);
        }
        let client_upgrade = hyper::upgrade::on(&mut request);
        let client_wants_upgrade = wants_upgrade(request.headers());
        let request = if request.method() == Method::POST && is_create_path(request.uri().path()) {
            match self.review_create(request).await {
                Ok(request) => request,
                Err(answer) => return answer,
            }
        } else {
            request.map(Either::Left)
        };

        let mut guest = self.guest.lock().await;
        let (sender, mut response) = match self.forward(guest.take(), request).await {
            Ok(forwarded) => forwarded,
            Err(err) => return self.proxy.unreachable(&err),
        };
        if response.status() != StatusCode::SWITCHING_PROTOCOLS {
            *guest = Some(sender);
            return response.map(Either::Left);
        }
        // The guest connection now belongs to the upgraded stream.
        drop(sender);
        if !client_wants_upgrade {
            let message =
                "rmachine: the engine switched protocols on a request that did not ask to";
            return error_response(StatusCode::BAD_GATEWAY, message);
        }
        let pending = PendingUpgrade {
            client: client_upgrade,
            guest: hyper::upgrade::on(&mut response),
        };
        *self.upgrade.lock().unwrap_or_else(PoisonError::into_inner) = Some(pending);
        response.map(Either::Left)
    }

    /// Sends `request` on the guest connection `reused` if it is still open, else on a
    /// new one. A request that the reused connection could not send (the engine closed
    /// it meanwhile) is sent once more on a new connection.
    async fn forward(
        &self,
        reused: Option<SendRequest<ProxyBody>>,
        request: Request<ProxyBody>,
    ) -> Result<(SendRequest<ProxyBody>, Response<Incoming>), ProxyError> {
        let reused = match reused {
            Some(mut sender) => sender.ready().await.is_ok().then_some(sender),
            None => None,
        };
        let Some(mut sender) = reused else {
            let mut sender = self.proxy.connect().await?;
            let response = sender
                .send_request(request)
                .await
                .map_err(ProxyError::Send)?;
            return Ok((sender, response));
        };
        match sender.try_send_request(request).await {
            Ok(response) => Ok((sender, response)),
            Err(mut err) => match err.take_message() {
                Some(request) => {
                    debug!(error = %err.error(), "engine connection closed; retrying on a new one");
                    let mut sender = self.proxy.connect().await?;
                    let response = sender
                        .send_request(request)
                        .await
                        .map_err(ProxyError::Send)?;
                    Ok((sender, response))
                }
                None => Err(ProxyError::Send(err.into_error())),
            },
        }
    }

    /// Reads the create body and lets the policy review it: the request to forward,
    /// or the answer that refuses it.
    async fn review_create(
        &self,
        request: Request<Incoming>,
    ) -> Result<Request<ProxyBody>, Response<ProxyBody>> {
        let (mut parts, body) = request.into_parts();
        let bytes = match read_create_body(body).await {
            CreateBody::Complete(bytes) => bytes,
            CreateBody::TooLarge => {
                let message = format!(
                    "rmachine: the container create request is larger than {MAX_CREATE_BODY} bytes"
                );
                let mut answer = error_response(StatusCode::PAYLOAD_TOO_LARGE, &message);
                answer
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
                return Err(answer);
            }
            CreateBody::Failed(err) => {
                debug!(error = %err, "cannot read a container create request");
                let message = format!("rmachine: cannot read the container create request: {err}");
                return Err(error_response(StatusCode::BAD_REQUEST, &message));
            }
        };
        let forwarded = match serde_json::from_slice::<Value>(&bytes) {
            // Not JSON: the engine answers that itself.
            Err(_) => bytes,
            Ok(mut body) => {
                let original = body.clone();
                if let Err(message) = self.proxy.policy.review(&mut body) {
                    info!(machine = %self.proxy.machine, reason = %message, "container create refused");
                    return Err(error_response(StatusCode::BAD_REQUEST, &message));
                }
                if body == original {
                    bytes
                } else {
                    match serde_json::to_vec(&body) {
                        Ok(json) => Bytes::from(json),
                        Err(err) => {
                            let message = format!(
                                "rmachine: cannot encode the container create request: {err}"
                            );
                            return Err(error_response(
                                StatusCode::INTERNAL_SERVER_ERROR,
                                &message,
                            ));
                        }
                    }
                }
            }
        };
        parts.headers.remove(header::TRANSFER_ENCODING);
        parts
            .headers
            .insert(header::CONTENT_LENGTH, HeaderValue::from(forwarded.len()));
        Ok(Request::from_parts(
            parts,
            Either::Right(Full::new(forwarded)),
        ))
    }
}

/// A create request's body, as read.
enum CreateBody {
    Complete(Bytes),
    /// Larger than [`MAX_CREATE_BODY`].
    TooLarge,
    Failed(hyper::Error),
}

/// Reads a create body of up to [`MAX_CREATE_BODY`]. A larger one is read on and
/// dropped, up to [`MAX_CREATE_DRAIN`], so that the client can read the refusal
/// (a client that is still writing when the connection closes sees a broken pipe).
async fn read_create_body(mut body: Incoming) -> CreateBody {
    let declared = body.size_hint().lower() as usize;
    if declared > MAX_CREATE_DRAIN {
        return CreateBody::TooLarge;
    }
    let mut kept = Vec::with_capacity(declared.min(MAX_CREATE_BODY));
    let mut total = 0usize;
    while let Some(frame) = body.frame().await {
        let data = match frame {
            Ok(frame) => match frame.into_data() {
                Ok(data) => data,
                Err(_trailers) => continue,
            },
            Err(err) => return CreateBody::Failed(err),
        };
        total = total.saturating_add(data.len());
        if total > MAX_CREATE_DRAIN {
            return CreateBody::TooLarge;
        }
        if total <= MAX_CREATE_BODY {
            kept.extend_from_slice(&data);
        }
    }
    if total > MAX_CREATE_BODY {
        return CreateBody::TooLarge;
    }
    CreateBody::Complete(Bytes::from(kept))
}

/// Waits for both connections to hand over their streams, then splices them.
async fn splice(pending: PendingUpgrade) {
    let (client, guest) = match tokio::try_join!(pending.client, pending.guest) {
        Ok(streams) => streams,
        Err(err) => {
            debug!(error = %err, "upgrade did not complete");
            return;
        }
    };
    let mut client = TokioIo::new(client);
    let mut guest = TokioIo::new(guest);
    match tokio::io::copy_bidirectional(&mut client, &mut guest).await {
        Ok((to_guest, to_client)) => {
            debug!(to_guest, to_client, "upgraded engine connection ended")
        }
        Err(err) => debug!(error = %err, "upgraded engine connection failed"),
    }
}

/// Whether the request asks for a protocol upgrade (`Connection: Upgrade`).
fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|token| token.trim().eq_ignore_ascii_case("upgrade"))
}

/// Whether `path` is the engine's container create endpoint, `/containers/create` with
/// or without a `/v1.xx` prefix. The engine's router matches the percent-decoded
/// path, so this does too.
fn is_create_path(path: &str) -> bool {
    let path = percent_decode(path);
    let unversioned = path
        .strip_prefix("/v")
        .and_then(|rest| rest.split_once('/'))
        .filter(|(version, _)| {
            !version.is_empty() && version.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        })
        .map(|(_, rest)| rest);
    match unversioned {
        Some(rest) => rest == "containers/create",
        None => path == "/containers/create",
    }
}

fn percent_decode(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let decoded = match (bytes[i], bytes.get(i + 1..i + 3)) {
            (b'%', Some(hex)) => std::str::from_utf8(hex)
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok()),
            _ => None,
        };
        match decoded {
            Some(b) => {
                out.push(b);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// An Engine API error answer: `{"message": ...}` as JSON, which the docker CLI prints.
fn error_response(status: StatusCode, message: &str) -> Response<ProxyBody> {
    let body = serde_json::json!({ "message": message }).to_string();
    let mut response = Response::new(Either::Right(Full::new(Bytes::from(body))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// `err` and its causes, joined by `: `.
fn error_chain(err: &dyn StdError) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::create_policy::{MachinePolicy, Share};
    use crate::fake_engine::{FakeEngine, UnreachableConnector};
    use rmachine_machine::sys::local_socket::{self, Endpoint};
    use serde_json::json;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const PATIENCE: Duration = Duration::from_secs(10);

    /// A proxy on a fresh local endpoint (a unix socket, a named pipe on Windows); the
    /// socket file goes when this is dropped.
    struct TestProxy {
        endpoint: Endpoint,
        task: tokio::task::JoinHandle<()>,
    }

    impl Drop for TestProxy {
        fn drop(&mut self) {
            self.task.abort();
            self.endpoint.remove_stale();
        }
    }

    fn machine_policy() -> Arc<dyn CreatePolicy> {
        Arc::new(MachinePolicy {
            machine: "default".into(),
            shares: vec![
                Share {
                    host_path: "/home/u".into(),
                    read_only: false,
                },
                Share {
                    host_path: "/data".into(),
                    read_only: true,
                },
            ],
            host_gateway: true,
        })
    }

    fn start_proxy(connector: Arc<dyn GuestConnector>, policy: Arc<dyn CreatePolicy>) -> TestProxy {
        start_gated_proxy(connector, policy, never_paused())
    }

    fn start_gated_proxy(
        connector: Arc<dyn GuestConnector>,
        policy: Arc<dyn CreatePolicy>,
        paused: Paused,
    ) -> TestProxy {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "rmachine-engine-proxy-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        let endpoint =
            Endpoint::for_machine(&std::env::temp_dir(), &format!("{name}.sock"), name.clone());
        let listener = LocalListener::bind(&endpoint).unwrap();
        let task = tokio::spawn(serve_engine(
            listener,
            "default".into(),
            connector,
            policy,
            paused,
        ));
        TestProxy { endpoint, task }
    }

    type Client = SendRequest<Full<Bytes>>;

    async fn client(proxy: &TestProxy) -> Client {
        let stream = local_socket::connect(&proxy.endpoint).await.unwrap();
        let (sender, conn) = client_http1::handshake(TokioIo::new(stream)).await.unwrap();
        tokio::spawn(conn.with_upgrades());
        sender
    }

    fn request(method: Method, path: &str, body: impl Into<Bytes>) -> Request<Full<Bytes>> {
        let body = body.into();
        let mut builder = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, "docker");
        if !body.is_empty() {
            builder = builder.header(header::CONTENT_TYPE, "application/json");
        }
        builder.body(Full::new(body)).unwrap()
    }

    async fn send(
        client: &mut Client,
        request: Request<Full<Bytes>>,
    ) -> (StatusCode, HeaderMap, Bytes) {
        client.ready().await.unwrap();
        let response = tokio::time::timeout(PATIENCE, client.send_request(request))
            .await
            .unwrap()
            .unwrap();
        let (parts, body) = response.into_parts();
        let body = tokio::time::timeout(PATIENCE, body.collect())
            .await
            .unwrap()
            .unwrap()
            .to_bytes();
        (parts.status, parts.headers, body)
    }

    async fn create(client: &mut Client, body: Value) -> (StatusCode, Value) {
        let (status, headers, body) = send(
            client,
            request(
                Method::POST,
                "/v1.45/containers/create?name=web",
                body.to_string(),
            ),
        )
        .await;
        if !status.is_success() {
            assert_eq!(headers[header::CONTENT_TYPE], "application/json");
        }
        (status, serde_json::from_slice(&body).unwrap())
    }

    fn message(body: &Value) -> &str {
        body["message"].as_str().unwrap()
    }

    #[tokio::test]
    async fn test_create_inside_a_share_is_forwarded_with_host_gateway() {
        let engine = FakeEngine::new();
        let proxy = start_proxy(engine.connector(), machine_policy());
        let mut client = client(&proxy).await;
        let body = json!({"Image": "alpine", "HostConfig": {"Binds": ["/home/u/src:/src", "cache:/cache"]}});
        let (status, answer) = create(&mut client, body).await;
        assert_eq!(status, StatusCode::CREATED);
        assert_eq!(answer["Id"], "c0ffee");
        let creates = engine.creates();
        assert_eq!(creates.len(), 1);
        assert_eq!(creates[0].path, "/v1.45/containers/create?name=web");
        assert_eq!(creates[0].content_length, Some(creates[0].body.len()));
        let received: Value = serde_json::from_slice(&creates[0].body).unwrap();
        assert_eq!(
            received,
            json!({"Image": "alpine", "HostConfig": {
                "Binds": ["/home/u/src:/src", "cache:/cache"],
                "ExtraHosts": ["host.docker.internal:host-gateway"],
            }})
        );
    }

    #[tokio::test]
    async fn test_create_without_version_prefix_is_reviewed() {
        let engine = FakeEngine::new();
        let proxy = start_proxy(engine.connector(), machine_policy());
        let mut client = client(&proxy).await;
        let bad = json!({"HostConfig": {"Binds": ["/srv/x:/x"]}}).to_string();
        for path in ["/containers/create", "/v1.24/containers%2Fcreate"] {
            let (status, _, _) = send(&mut client, request(Method::POST, path, bad.clone())).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{path}");
        }
        assert!(engine.creates().is_empty());
    }

    #[cfg_attr(
        windows,
        ignore = "shared folders are Linux-only so far: Windows paths are not yet translated to the guest's"
    )]
    #[tokio::test]
    async fn test_refused_creates_never_reach_the_engine() {
        let engine = FakeEngine::new();
        let proxy = start_proxy(engine.connector(), machine_policy());
        let mut client = client(&proxy).await;
        let (status, answer) =
            create(&mut client, json!({"HostConfig": {"Binds": ["/srv/x:/x"]}})).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(
            message(&answer),
            "rmachine: bind mount source /srv/x is not shared with machine \"default\" (shared: /home/u, \
             /data (read-only)); share it with `rmachine create --mount PATH`"
        );

        let (status, answer) = create(
            &mut client,
            json!({"HostConfig": {"Binds": ["/home/u/../../etc:/x"]}}),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(
            message(&answer).contains("source /etc is not shared"),
            "{answer}"
        );

        let mounts = json!({"HostConfig": {"Mounts": [{"Type": "bind", "Source": "/data2", "Target": "/d"}]}});
        let (status, answer) = create(&mut client, mounts).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(
            message(&answer).contains("source /data2 is not shared"),
            "{answer}"
        );

        let (status, answer) = create(
            &mut client,
            json!({"HostConfig": {"Binds": ["/data2/x:/x"]}}),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(
            message(&answer).contains("source /data2/x is not shared"),
            "{answer}"
        );

        assert!(engine.creates().is_empty());
        // The client connection stays usable after a refusal.
        let (status, _, _) = send(&mut client, request(Method::GET, "/_ping", Bytes::new())).await;
        assert_eq!(status, StatusCode::OK);
    }

    #[tokio::test]
    async fn test_allowed_binds_reach_the_engine() {
        let engine = FakeEngine::new();
        let proxy = start_proxy(engine.connector(), machine_policy());
        let mut client = client(&proxy).await;
        let bodies = [
            json!({"HostConfig": {"Binds": ["myvolume:/v"]}}),
            json!({"HostConfig": {"Binds": ["/var/run/docker.sock:/var/run/docker.sock"]}}),
            json!({"HostConfig": {"Binds": ["/data/x:/x:ro"]}}),
            json!({"HostConfig": {"Mounts": [{"Type": "bind", "Source": "/data/x", "Target": "/x", "ReadOnly": true}]}}),
            json!({"HostConfig": {"Mounts": [{"Type": "bind", "Source": "/home/u/./a/../b", "Target": "/x"}]}}),
            json!({"HostConfig": {"Mounts": [{"Type": "volume", "Source": "v", "Target": "/v"}]}}),
        ];
        for body in &bodies {
            let (status, answer) = create(&mut client, body.clone()).await;
            assert_eq!(status, StatusCode::CREATED, "{body}: {answer}");
        }
        assert_eq!(engine.creates().len(), bodies.len());
    }

    #[tokio::test]
    async fn test_create_body_that_is_not_json_passes_unchanged() {
        let engine = FakeEngine::new();
        let proxy = start_proxy(engine.connector(), machine_policy());
        let mut client = client(&proxy).await;
        let (status, _, _) = send(
            &mut client,
            request(Method::POST, "/containers/create", "{nope"),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED);
        assert_eq!(&engine.creates()[0].body[..], b"{nope");
    }

    #[tokio::test]
    async fn test_oversized_create_body_is_refused_with_413() {
        let engine = FakeEngine::new();
        let proxy = start_proxy(engine.connector(), machine_policy());
        let stream = local_socket::connect(&proxy.endpoint).await.unwrap();
        let (mut reader, mut writer) = tokio::io::split(stream);
        let size = MAX_CREATE_BODY + 1024;
        let writing = tokio::spawn(async move {
            let head = format!(
                "POST /v1.45/containers/create HTTP/1.1\r\nHost: docker\r\nContent-Type: application/json\r\n\
                 Content-Length: {size}\r\n\r\n"
            );
            writer.write_all(head.as_bytes()).await?;
            writer.write_all(&vec![b' '; size]).await?;
            // Dropping the writer would half-close, which a client must not do here.
            Ok::<_, io::Error>(writer)
        });
        let mut answer = Vec::new();
        tokio::time::timeout(PATIENCE, reader.read_to_end(&mut answer))
            .await
            .unwrap()
            .unwrap();
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.starts_with("HTTP/1.1 413 Payload Too Large\r\n"),
            "{answer}"
        );
        assert!(
            answer.contains("content-type: application/json\r\n"),
            "{answer}"
        );
        assert!(answer.ends_with(&format!(
            "{{\"message\":\"rmachine: the container create request is larger than {MAX_CREATE_BODY} bytes\"}}"
        )));
        let _ = writing.await;
        assert!(engine.creates().is_empty());
    }

    #[tokio::test]
    async fn test_large_bodies_of_other_requests_stream_through() {
        let engine = FakeEngine::new();
        let proxy = start_proxy(engine.connector(), machine_policy());
        let mut client = client(&proxy).await;
        let size = 3 * MAX_CREATE_BODY;
        let (status, _, body) = send(
            &mut client,
            request(Method::POST, "/v1.45/images/load", vec![7u8; size]),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            serde_json::from_slice::<Value>(&body).unwrap(),
            json!({"received": size})
        );
    }

    #[tokio::test]
    async fn test_streaming_response_arrives_incrementally() {
        let engine = FakeEngine::new();
        let proxy = start_proxy(engine.connector(), machine_policy());
        let mut client = client(&proxy).await;
        client.ready().await.unwrap();
        let response = tokio::time::timeout(
            PATIENCE,
            client.send_request(request(
                Method::GET,
                "/v1.45/containers/web/logs?follow=1",
                Bytes::new(),
            )),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()[header::TRANSFER_ENCODING], "chunked");
        let mut body = response.into_body();
        for chunk in ["first line\n", "second line\n"] {
            engine.stream_chunk(chunk);
            let frame = tokio::time::timeout(PATIENCE, body.frame())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            assert_eq!(frame.into_data().unwrap(), chunk);
        }
        engine.end_stream();
        assert!(tokio::time::timeout(PATIENCE, body.frame())
            .await
            .unwrap()
            .is_none());
    }

    #[tokio::test]
    async fn test_client_leaving_a_stream_closes_the_guest_connection() {
        let engine = FakeEngine::new();
        let proxy = start_proxy(engine.connector(), machine_policy());
        let mut client = client(&proxy).await;
        client.ready().await.unwrap();
        let response = client
            .send_request(request(Method::GET, "/events", Bytes::new()))
            .await
            .unwrap();
        engine.stream_chunk("{}\n");
        let mut body = response.into_body();
        assert!(body.frame().await.is_some());
        assert_eq!(engine.open_connections(), 1);
        drop(body);
        drop(client);
        engine.wait_for_open_connections(0).await;
    }

    #[cfg_attr(
        windows,
        ignore = "named pipes have no half-close (the docker CLI's npipe transport has none either)"
    )]
    #[tokio::test]
    async fn test_upgrade_splices_raw_bytes_both_ways() {
        let engine = FakeEngine::new();
        let proxy = start_proxy(engine.connector(), machine_policy());
        let mut client = client(&proxy).await;
        let mut upgrade = request(
            Method::POST,
            "/v1.45/exec/abc/start",
            json!({"Tty": true}).to_string(),
        );
        upgrade
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        upgrade
            .headers_mut()
            .insert(header::UPGRADE, HeaderValue::from_static("tcp"));
        client.ready().await.unwrap();
        let response = tokio::time::timeout(PATIENCE, client.send_request(upgrade))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
        assert_eq!(response.headers()[header::UPGRADE], "tcp");
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "application/vnd.docker.raw-stream"
        );
        let mut stream = TokioIo::new(
            tokio::time::timeout(PATIENCE, hyper::upgrade::on(response))
                .await
                .unwrap()
                .unwrap(),
        );

        // The engine speaks first, right after its 101.
        let mut greeting = [0u8; 7];
        tokio::time::timeout(PATIENCE, stream.read_exact(&mut greeting))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&greeting, b"engine>");
        stream.write_all(b"ls -l\n").await.unwrap();
        let mut echo = [0u8; 6];
        tokio::time::timeout(PATIENCE, stream.read_exact(&mut echo))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&echo, b"ls -l\n");
        // Half-close: the engine sees the end of input and still answers.
        stream.shutdown().await.unwrap();
        let mut rest = Vec::new();
        tokio::time::timeout(PATIENCE, stream.read_to_end(&mut rest))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(rest, b"bye\n");
        assert_eq!(engine.upgrade_input(), b"ls -l\n");
    }

    #[tokio::test]
    async fn test_refused_upgrade_keeps_the_connection() {
        let engine = FakeEngine::new();
        let proxy = start_proxy(engine.connector(), machine_policy());
        let mut client = client(&proxy).await;
        let mut upgrade = request(Method::POST, "/v1.45/exec/nope/start", Bytes::new());
        upgrade
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        upgrade
            .headers_mut()
            .insert(header::UPGRADE, HeaderValue::from_static("tcp"));
        let (status, _, _) = send(&mut client, upgrade).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (status, _, _) = send(&mut client, request(Method::GET, "/_ping", Bytes::new())).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(engine.connections(), 1);
    }

    #[tokio::test]
    async fn test_requests_while_paused_are_answered_with_the_reason_at_once() {
        let engine = FakeEngine::new();
        let (pause, paused) = tokio::sync::watch::channel(None);
        let proxy = start_gated_proxy(engine.connector(), machine_policy(), paused);
        let mut first = client(&proxy).await;
        let (status, _, _) = send(&mut first, request(Method::GET, "/_ping", Bytes::new())).await;
        assert_eq!(status, StatusCode::OK);
        pause.send_replace(Some("the VM is paused: the host disk is full".into()));
        // Neither a new client nor the open one waits on the guest.
        let mut other = client(&proxy).await;
        for c in [&mut first, &mut other] {
            let (status, _, body) = tokio::time::timeout(
                Duration::from_secs(5),
                send(
                    c,
                    request(Method::GET, "/v1.45/containers/json", Bytes::new()),
                ),
            )
            .await
            .expect("answered at once");
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
            let body: Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(
                message(&body),
                "rmachine: machine \"default\": the VM is paused: the host disk is full"
            );
        }
        assert_eq!(
            engine.connections(),
            1,
            "no request reached the guest while paused"
        );
        pause.send_replace(None);
        let (status, _, _) = send(&mut first, request(Method::GET, "/_ping", Bytes::new())).await;
        assert_eq!(status, StatusCode::OK);
    }

    #[tokio::test]
    async fn test_many_headers_and_their_case_pass() {
        let engine = FakeEngine::new();
        let proxy = start_proxy(engine.connector(), machine_policy());
        let stream = local_socket::connect(&proxy.endpoint).await.unwrap();
        let (mut reader, mut writer) = tokio::io::split(stream);
        let mut head = String::from("HEAD /_ping HTTP/1.1\r\nHost: docker\r\n");
        for i in 0..300 {
            head.push_str(&format!("X-Docker-Expose-Session-Grpc-Method: /m{i}\r\n"));
        }
        head.push_str("\r\n");
        writer.write_all(head.as_bytes()).await.unwrap();
        let mut answer = vec![0u8; 4096];
        let n = tokio::time::timeout(PATIENCE, reader.read(&mut answer))
            .await
            .unwrap()
            .unwrap();
        let answer = String::from_utf8_lossy(&answer[..n]);
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        // The engine's spelling, and its length although a HEAD answer has no body.
        assert!(answer.contains("\r\nApi-Version: 1.45\r\n"), "{answer}");
        assert!(answer.contains("\r\nContent-Length: 2\r\n"), "{answer}");
        assert_eq!(engine.requests(), ["HEAD /_ping"]);
        drop(writer);
    }

    #[tokio::test]
    async fn test_keep_alive_requests_share_one_guest_connection() {
        let engine = FakeEngine::new();
        let proxy = start_proxy(engine.connector(), machine_policy());
        let mut client = client(&proxy).await;
        for _ in 0..2 {
            let (status, headers, body) =
                send(&mut client, request(Method::GET, "/_ping", Bytes::new())).await;
            assert_eq!(status, StatusCode::OK);
            assert_eq!(headers["api-version"], "1.45");
            assert_eq!(body, "OK");
        }
        let (status, _, _) = send(&mut client, request(Method::GET, "/nope", Bytes::new())).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(engine.requests(), ["GET /_ping", "GET /_ping", "GET /nope"]);
        assert_eq!(engine.connections(), 1);
    }

    #[tokio::test]
    async fn test_connection_close_from_the_engine_reaches_the_client() {
        let engine = FakeEngine::new();
        let proxy = start_proxy(engine.connector(), machine_policy());
        let mut client = client(&proxy).await;
        let (status, headers, _) =
            send(&mut client, request(Method::GET, "/close", Bytes::new())).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers[header::CONNECTION], "close");
        tokio::time::timeout(PATIENCE, std::future::poll_fn(|cx| client.poll_ready(cx)))
            .await
            .unwrap()
            .unwrap_err();
        engine.wait_for_open_connections(0).await;
    }

    #[tokio::test]
    async fn test_guest_connection_closed_by_the_engine_is_reopened() {
        let engine = FakeEngine::new();
        let proxy = start_proxy(engine.connector(), machine_policy());
        let mut client = client(&proxy).await;
        let (status, _, _) = send(&mut client, request(Method::GET, "/hangup", Bytes::new())).await;
        assert_eq!(status, StatusCode::OK);
        engine.wait_for_open_connections(0).await;
        let (status, _, _) = send(&mut client, request(Method::GET, "/_ping", Bytes::new())).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(engine.connections(), 2);
    }

    #[tokio::test]
    async fn test_unreachable_engine_answers_502() {
        let proxy = start_proxy(Arc::new(UnreachableConnector), machine_policy());
        let mut client = client(&proxy).await;
        let (status, headers, body) =
            send(&mut client, request(Method::GET, "/_ping", Bytes::new())).await;
        assert_eq!(status, StatusCode::BAD_GATEWAY);
        assert_eq!(headers[header::CONTENT_TYPE], "application/json");
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            message(&body),
            "rmachine: cannot reach the engine of machine \"default\": cannot connect to the guest's engine \
             service: connection refused by the fake guest"
        );
    }

    #[tokio::test]
    #[cfg_attr(
        windows,
        ignore = "runs the Linux docker CLI against a unix socket: under wine there is no docker.exe"
    )]
    async fn test_docker_cli_prints_the_refusal() {
        let docker = std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|p| p.join("docker"))
                .find(|p| p.is_file())
        });
        let Some(docker) = docker else {
            assert!(
                std::env::var("REQUIRE_KVM").as_deref() != Ok("1"),
                "REQUIRE_KVM=1 (CI) but there is no docker CLI on PATH"
            );
            eprintln!("skipped: no docker CLI on PATH");
            return;
        };
        let engine = FakeEngine::new();
        let proxy = start_proxy(engine.connector(), machine_policy());
        let config =
            std::env::temp_dir().join(format!("rmachine-engine-proxy-cli-{}", std::process::id()));
        std::fs::create_dir_all(&config).unwrap();
        let output = tokio::time::timeout(
            PATIENCE,
            tokio::process::Command::new(docker)
                .env("DOCKER_CONFIG", &config)
                .env_remove("DOCKER_HOST")
                .env_remove("DOCKER_CONTEXT")
                .args([
                    "-H",
                    &proxy.endpoint.docker_host(),
                    "run",
                    "--rm",
                    "-v",
                    "/srv/x:/x",
                ])
                .args(["alpine", "true"])
                .output(),
        )
        .await
        .unwrap()
        .unwrap();
        let _ = std::fs::remove_dir_all(&config);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success());
        assert!(
            stderr.contains(
                "Error response from daemon: rmachine: bind mount source /srv/x is not shared with machine \
                 \"default\" (shared: /home/u, /data (read-only)); share it with `rmachine create --mount PATH`"
            ),
            "{stderr}"
        );
        assert!(engine.creates().is_empty());
        assert!(
            engine.requests().iter().any(|r| r.ends_with("/_ping")),
            "{:?}",
            engine.requests()
        );
    }

    #[test]
    fn test_create_path_matching() {
        for path in [
            "/containers/create",
            "/v1.45/containers/create",
            "/v1.24/containers%2fcreate",
            "/v1/containers/create",
        ] {
            assert!(is_create_path(path), "{path}");
        }
        for path in [
            "/containers/created",
            "/v1.45/containers/create/x",
            "/vx/containers/create",
            "/v/containers/create",
            "/v1.45/v1.45/containers/create",
            "/containers/abc/start",
            "/volumes/create",
        ] {
            assert!(!is_create_path(path), "{path}");
        }
    }

    #[test]
    fn test_wants_upgrade() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        assert!(!wants_upgrade(&headers));
        headers.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
        assert!(wants_upgrade(&headers));
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        assert!(!wants_upgrade(&headers));
    }
}
