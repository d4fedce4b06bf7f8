//! A minimal client of the guest's Docker Engine API, over streams from a
//! [`GuestConnector`]: the running containers, one container's published ports, and the
//! streaming `/events` of containers.
//!
//! Each [`EngineSession`] is one HTTP/1.1 keep-alive connection; the event stream gets
//! its own. Only the fields this crate needs are parsed; unknown fields are ignored.

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::{header, Request, StatusCode};
use hyper_util::rt::TokioIo;
use rmachine_protocol::Service;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use tokio::task::JoinHandle;
use tracing::debug;

use crate::connector::GuestConnector;
use crate::json_lines::JsonLines;
use crate::port::{ContainerRef, PublishedPort, Transport};

/// How long a request may take, from sending it to the end of its body (for `/events`:
/// to its headers).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// Largest response body read (the container list of a busy engine is well below).
const MAX_BODY: usize = 32 * 1024 * 1024;

/// The `/events` query: container events that change published ports, and swarm service
/// events (a service's published ports are its routing mesh's, open on every node).
const EVENTS_PATH: &str = concat!(
    "/events?filters=",
    // {"type":["container","service"],
    //  "event":["start","die","stop","destroy","create","update","remove"]}
    "%7B%22type%22%3A%5B%22container%22%2C%22service%22%5D%2C%22event%22%3A%5B",
    "%22start%22%2C%22die%22%2C%22stop%22%2C%22destroy%22%2C%22create%22%2C",
    "%22update%22%2C%22remove%22%5D%7D"
);

/// Why an Engine API call failed.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("cannot connect to the guest's engine service")]
    Connect(#[source] io::Error),
    #[error("http handshake with the engine failed")]
    Handshake(#[source] hyper::Error),
    #[error("cannot build the request for {path}")]
    BuildRequest {
        path: String,
        #[source]
        source: hyper::http::Error,
    },
    #[error("request for {path} failed")]
    Request {
        path: String,
        #[source]
        source: hyper::Error,
    },
    #[error("request for {path} timed out after {REQUEST_TIMEOUT:?}")]
    Timeout { path: String },
    #[error("engine answered {status} to {path}: {message}")]
    Status {
        path: String,
        status: StatusCode,
        message: String,
    },
    #[error("cannot read the answer to {path}")]
    Body {
        path: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("cannot parse the answer to {path}")]
    Parse {
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("reading the event stream")]
    Events(#[source] hyper::Error),
}

/// An entry of `GET /containers/json`.
#[derive(Debug, Clone, Deserialize)]
pub struct ContainerSummary {
    #[serde(rename = "Id")]
    pub id: String,
}

/// The parts of `GET /containers/{id}/json` this crate reads.
#[derive(Debug, Clone, Deserialize)]
pub struct ContainerInspect {
    #[serde(rename = "Id")]
    pub id: String,
    #[serde(rename = "Name", default)]
    pub name: String,
    #[serde(rename = "State", default)]
    pub state: ContainerState,
    #[serde(rename = "NetworkSettings", default)]
    pub network_settings: NetworkSettings,
    #[serde(rename = "Mounts", default)]
    pub mounts: Vec<MountPoint>,
}

/// An entry of a container's `Mounts`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct MountPoint {
    /// `bind`, `volume`, `tmpfs`, …
    #[serde(rename = "Type", default)]
    pub kind: String,
    /// The source path (in the guest, which for shared folders is the host's path).
    #[serde(rename = "Source", default)]
    pub source: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct ContainerState {
    #[serde(rename = "Running", default)]
    pub running: bool,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct NetworkSettings {
    /// `"80/tcp"` → its host bindings; `null` for a port exposed but not published.
    #[serde(rename = "Ports", default)]
    pub ports: Option<BTreeMap<String, Option<Vec<PortBinding>>>>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct PortBinding {
    #[serde(rename = "HostIp", default)]
    pub host_ip: String,
    #[serde(rename = "HostPort", default)]
    pub host_port: String,
}

impl ContainerInspect {
    /// The sources of its bind mounts while it runs (none once it stopped).
    pub fn bind_sources(&self) -> Vec<std::path::PathBuf> {
        if !self.state.running {
            return Vec::new();
        }
        let mut out: Vec<std::path::PathBuf> = self
            .mounts
            .iter()
            .filter(|m| m.kind == "bind" && !m.source.is_empty())
            .map(|m| m.source.clone().into())
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// Who owns this container's ports.
    pub fn container_ref(&self) -> ContainerRef {
        ContainerRef {
            id: self.id.clone(),
            name: self.name.trim_start_matches('/').to_string(),
        }
    }

    /// The ports published on the host, sorted and without duplicates; none unless the
    /// container runs. Bindings that cannot be parsed (`sctp`, an empty `HostPort`) are
    /// left out.
    pub fn published_ports(&self) -> Vec<PublishedPort> {
        if !self.state.running {
            return Vec::new();
        }
        let mut out = Vec::new();
        for (key, bindings) in self.network_settings.ports.iter().flatten() {
            let Some(transport) = key
                .split_once('/')
                .and_then(|(_, proto)| Transport::from_docker(proto))
            else {
                continue;
            };
            for binding in bindings.iter().flatten() {
                let host_ip = match binding.host_ip.as_str() {
                    "" => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                    ip => match ip.parse() {
                        Ok(ip) => ip,
                        Err(_) => continue,
                    },
                };
                match binding.host_port.parse::<u16>() {
                    Ok(host_port) if host_port != 0 => out.push(PublishedPort {
                        transport,
                        host_ip,
                        host_port,
                    }),
                    _ => continue,
                }
            }
        }
        out.sort();
        out.dedup();
        out
    }
}

/// A swarm service of `GET /services`, with what the publisher needs.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ServiceSummary {
    #[serde(rename = "ID", default)]
    pub id: String,
    #[serde(rename = "Spec", default)]
    spec: ServiceSpec,
    #[serde(rename = "Endpoint", default)]
    endpoint: ServiceEndpoint,
}

#[derive(Debug, Clone, Default, Deserialize)]
struct ServiceSpec {
    #[serde(rename = "Name", default)]
    name: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
struct ServiceEndpoint {
    #[serde(rename = "Ports", default)]
    ports: Vec<ServicePort>,
}

#[derive(Debug, Clone, Default, Deserialize)]
struct ServicePort {
    #[serde(rename = "Protocol", default)]
    protocol: String,
    #[serde(rename = "PublishedPort", default)]
    published: u32,
    #[serde(rename = "PublishMode", default)]
    mode: String,
}

/// The prefix that keeps a service's id apart from containers' ids in the port table.
pub const SERVICE_ID_PREFIX: &str = "service:";

impl ServiceSummary {
    /// The owner reference of its ports: `service:<id>`, named `service <name>`.
    pub fn owner(&self) -> ContainerRef {
        ContainerRef {
            id: format!("{SERVICE_ID_PREFIX}{}", self.id),
            name: format!("service {}", self.spec.name),
        }
    }

    /// Its routing mesh's ports (`ingress` mode): open on every node's addresses, loopback
    /// included, so the guest reaches them on `127.0.0.1`. `host` mode ports are its tasks'
    /// containers' own, published with them. SCTP and invalid ports are skipped.
    pub fn published_ports(&self) -> Vec<PublishedPort> {
        let mut out: Vec<PublishedPort> = self
            .endpoint
            .ports
            .iter()
            .filter(|p| p.mode.is_empty() || p.mode == "ingress")
            .filter_map(|p| {
                // An empty protocol is the API's default, tcp.
                let transport = Transport::from_docker(p.protocol.as_str())
                    .or(p.protocol.is_empty().then_some(Transport::Tcp))?;
                let host_port = u16::try_from(p.published).ok().filter(|&n| n != 0)?;
                Some(PublishedPort {
                    transport,
                    host_ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                    host_port,
                })
            })
            .collect();
        out.sort();
        out.dedup();
        out
    }
}

/// A container event of `/events`, in both the current (`Action`, `Actor.ID`) and the
/// legacy (`status`, `id`) spelling.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Event {
    #[serde(rename = "Type", default)]
    pub kind: String,
    #[serde(rename = "Action", default)]
    action: String,
    #[serde(rename = "Actor", default)]
    actor: Actor,
    #[serde(default)]
    status: String,
    #[serde(default)]
    id: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
struct Actor {
    #[serde(rename = "ID", default)]
    id: String,
}

impl Event {
    /// What happened (`start`, `die`, `exec_start: sh`, …).
    pub fn action(&self) -> &str {
        if self.action.is_empty() {
            &self.status
        } else {
            &self.action
        }
    }

    /// The id of the object it happened to.
    pub fn actor_id(&self) -> &str {
        if self.actor.id.is_empty() {
            &self.id
        } else {
            &self.actor.id
        }
    }

    /// Whether this is a swarm service event.
    pub fn is_service(&self) -> bool {
        self.kind == "service"
    }

    /// Whether this is a container event (events without a type are from old engines,
    /// which only sent container events).
    pub fn is_container(&self) -> bool {
        self.kind.is_empty() || self.kind == "container"
    }
}

/// Aborts a spawned task when dropped.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Opens connections to the guest's Engine API.
#[derive(Clone)]
pub struct EngineClient {
    connector: Arc<dyn GuestConnector>,
}

impl EngineClient {
    pub fn new(connector: Arc<dyn GuestConnector>) -> EngineClient {
        EngineClient { connector }
    }

    /// Opens one keep-alive connection for requests.
    pub async fn session(&self) -> Result<EngineSession, EngineError> {
        let (sender, conn) = self.handshake().await?;
        Ok(EngineSession {
            sender,
            _conn: conn,
        })
    }

    /// Subscribes to container events, on a connection of its own.
    pub async fn events(&self) -> Result<EventStream, EngineError> {
        let mut session = self.session().await?;
        let path = EVENTS_PATH.to_string();
        let response = tokio::time::timeout(REQUEST_TIMEOUT, session.send(&path))
            .await
            .map_err(|_| EngineError::Timeout { path: path.clone() })??;
        let status = response.status();
        if !status.is_success() {
            let message = read_body(&path, response.into_body())
                .await
                .map(|b| error_message(&b))
                .unwrap_or_default();
            return Err(EngineError::Status {
                path,
                status,
                message,
            });
        }
        Ok(EventStream {
            body: response.into_body(),
            decoder: JsonLines::new(),
            _session: session,
        })
    }

    async fn handshake(&self) -> Result<(SendRequest<Empty<Bytes>>, AbortOnDrop), EngineError> {
        let stream = self
            .connector
            .connect(Service::Engine)
            .await
            .map_err(EngineError::Connect)?;
        let (sender, conn) =
            tokio::time::timeout(REQUEST_TIMEOUT, http1::handshake(TokioIo::new(stream)))
                .await
                .map_err(|_| EngineError::Timeout {
                    path: "(handshake)".into(),
                })?
                .map_err(EngineError::Handshake)?;
        let task = tokio::spawn(async move {
            if let Err(err) = conn.await {
                debug!(error = %err, "engine connection ended");
            }
        });
        Ok((sender, AbortOnDrop(task)))
    }
}

/// One HTTP/1.1 connection to the Engine API.
pub struct EngineSession {
    sender: SendRequest<Empty<Bytes>>,
    _conn: AbortOnDrop,
}

impl EngineSession {
    /// Whether the connection is gone (the next request would fail).
    pub fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }

    /// The ids of the running containers.
    pub async fn running_containers(&mut self) -> Result<Vec<ContainerSummary>, EngineError> {
        Ok(self.get_json("/containers/json").await?.unwrap_or_default())
    }

    /// The swarm services with their published ports; empty when this engine is not a
    /// swarm manager (it then answers 503: only managers know the services) or answers the
    /// list with an error or with something that is not one: services' ports are an
    /// extra, and containers' ports must not stop being published because of them. A
    /// broken connection is still an error.
    pub async fn services(&mut self) -> Result<Vec<ServiceSummary>, EngineError> {
        match self.get_json("/services").await {
            Ok(list) => Ok(list.unwrap_or_default()),
            Err(e @ (EngineError::Status { .. } | EngineError::Parse { .. })) => {
                debug!(error = %e, "no swarm services");
                Ok(Vec::new())
            }
            Err(e) => Err(e),
        }
    }

    /// Inspects a container; `None` if the engine does not know it (anymore).
    pub async fn inspect(&mut self, id: &str) -> Result<Option<ContainerInspect>, EngineError> {
        if id.is_empty()
            || !id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
        {
            return Ok(None);
        }
        self.get_json(&format!("/containers/{id}/json")).await
    }

    async fn get_json<T: DeserializeOwned>(
        &mut self,
        path: &str,
    ) -> Result<Option<T>, EngineError> {
        let path = path.to_string();
        tokio::time::timeout(REQUEST_TIMEOUT, async {
            let response = self.send(&path).await?;
            let status = response.status();
            let body = read_body(&path, response.into_body()).await?;
            if status == StatusCode::NOT_FOUND {
                return Ok(None);
            }
            if !status.is_success() {
                return Err(EngineError::Status {
                    path: path.clone(),
                    status,
                    message: error_message(&body),
                });
            }
            serde_json::from_slice(&body)
                .map(Some)
                .map_err(|source| EngineError::Parse {
                    path: path.clone(),
                    source,
                })
        })
        .await
        .map_err(|_| EngineError::Timeout { path: path.clone() })?
    }

    async fn send(&mut self, path: &str) -> Result<hyper::Response<Incoming>, EngineError> {
        let request = Request::get(path)
            .header(header::HOST, "docker")
            .body(Empty::new())
            .map_err(|source| EngineError::BuildRequest {
                path: path.to_string(),
                source,
            })?;
        self.sender
            .ready()
            .await
            .map_err(|source| EngineError::Request {
                path: path.to_string(),
                source,
            })?;
        self.sender
            .send_request(request)
            .await
            .map_err(|source| EngineError::Request {
                path: path.to_string(),
                source,
            })
    }
}

async fn read_body(path: &str, body: Incoming) -> Result<Bytes, EngineError> {
    Ok(Limited::new(body, MAX_BODY)
        .collect()
        .await
        .map_err(|source| EngineError::Body {
            path: path.to_string(),
            source,
        })?
        .to_bytes())
}

/// The `message` of an Engine API error body, or the body's start.
fn error_message(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct ErrorBody {
        message: String,
    }
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(e) => e.message,
        Err(_) => String::from_utf8_lossy(body).chars().take(200).collect(),
    }
}

/// The `/events` stream of container events.
pub struct EventStream {
    body: Incoming,
    decoder: JsonLines<Event>,
    _session: EngineSession,
}

impl EventStream {
    /// The next event; `None` when the engine ended the stream. Lines that are not
    /// events are skipped (with a rate-limited warning).
    pub async fn next(&mut self) -> Result<Option<Event>, EngineError> {
        loop {
            if let Some(event) = self.decoder.next_value() {
                return Ok(Some(event));
            }
            match self.body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.decoder.push(&data);
                    }
                }
                Some(Err(err)) => return Err(EngineError::Events(err)),
                None => {
                    debug!(
                        skipped_lines = self.decoder.skipped(),
                        "engine ended the event stream"
                    );
                    return Ok(self.decoder.finish());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake_guest::{FakeContainer, FakeGuest};

    fn inspect(json: serde_json::Value) -> ContainerInspect {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn test_published_ports_from_inspect() {
        let c = inspect(serde_json::json!({
            "Id": "abc", "Name": "/web", "Unknown": {"x": 1},
            "State": {"Running": true, "Status": "running"},
            "NetworkSettings": {"Ports": {
                "80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8080"}, {"HostIp": "::", "HostPort": "8080"}],
                "53/udp": [{"HostIp": "", "HostPort": "5353"}],
                "443/tcp": null,
                "9/sctp": [{"HostIp": "0.0.0.0", "HostPort": "9"}],
                "1/tcp": [{"HostIp": "0.0.0.0", "HostPort": ""}]
            }}
        }));
        let ports: Vec<String> = c.published_ports().iter().map(|p| p.to_string()).collect();
        assert_eq!(
            ports,
            vec!["0.0.0.0:8080/tcp", "[::]:8080/tcp", "0.0.0.0:5353/udp"]
        );
        assert_eq!(
            c.container_ref(),
            ContainerRef {
                id: "abc".into(),
                name: "web".into()
            }
        );
    }

    #[test]
    fn test_stopped_container_publishes_nothing() {
        let c = inspect(serde_json::json!({
            "Id": "abc", "State": {"Running": false},
            "NetworkSettings": {"Ports": {"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8080"}]}}
        }));
        assert!(c.published_ports().is_empty());
        let c = inspect(
            serde_json::json!({"Id": "abc", "State": {"Running": true}, "NetworkSettings": {"Ports": null}}),
        );
        assert!(c.published_ports().is_empty());
    }

    #[test]
    fn test_event_spellings() {
        let e: Event = serde_json::from_str(
            r#"{"Type":"container","Action":"start","Actor":{"ID":"abc","Attributes":{"name":"web"}},"time":1}"#,
        )
        .unwrap();
        assert_eq!(
            (e.action(), e.actor_id(), e.is_container()),
            ("start", "abc", true)
        );
        let e: Event =
            serde_json::from_str(r#"{"status":"die","id":"def","from":"nginx"}"#).unwrap();
        assert_eq!(
            (e.action(), e.actor_id(), e.is_container()),
            ("die", "def", true)
        );
        let e: Event =
            serde_json::from_str(r#"{"Type":"network","Action":"connect","Actor":{"ID":"n"}}"#)
                .unwrap();
        assert!(!e.is_container());
    }

    #[tokio::test]
    async fn test_list_inspect_and_events_against_fake_engine() {
        let guest = FakeGuest::new().await;
        guest.add_container(FakeContainer::tcp("c1", "127.0.0.1", 18080));
        let client = EngineClient::new(guest.connector());
        let mut session = client.session().await.unwrap();
        let ids: Vec<String> = session
            .running_containers()
            .await
            .unwrap()
            .into_iter()
            .map(|c| c.id)
            .collect();
        assert_eq!(ids, vec!["c1"]);
        let c = session.inspect("c1").await.unwrap().unwrap();
        assert_eq!(c.published_ports().len(), 1);
        assert!(session.inspect("nope").await.unwrap().is_none());
        assert!(session.inspect("../../version").await.unwrap().is_none());

        let mut events = client.events().await.unwrap();
        guest.wait_for_event_subscribers(1).await;
        guest.send_events_raw(b"{\"Type\":\"container\",\"Action\":\"st");
        guest.send_events_raw(b"art\",\"Actor\":{\"ID\":\"c1\"}}\ngarbage\n");
        guest.send_events_raw(
            b"{\"Type\":\"container\",\"Action\":\"die\",\"Actor\":{\"ID\":\"c1\"}}\n",
        );
        let e = events.next().await.unwrap().unwrap();
        assert_eq!((e.action(), e.actor_id()), ("start", "c1"));
        let e = events.next().await.unwrap().unwrap();
        assert_eq!((e.action(), e.actor_id()), ("die", "c1"));
        guest.end_event_streams();
        assert!(events.next().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn test_engine_error_status_is_reported() {
        let guest = FakeGuest::new().await;
        guest.set_events_status(500);
        let err = EngineClient::new(guest.connector())
            .events()
            .await
            .err()
            .unwrap();
        assert!(
            matches!(&err, EngineError::Status { status, message, .. } if status.as_u16() == 500 && message == "events unavailable"),
            "{err:?}"
        );
    }
}
