//! The ports open on the host, each owned by one container, and the changes that keep
//! them equal to what the engine publishes: set one container's ports, remove a
//! container, resync everything.
//!
//! Every change reports [`PortEvent`]s and republishes the [`PortStatus`] list. A port
//! that could not be opened stays in the table as failed (so that status shows it) and
//! is retried whenever its container's ports are set again.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use crate::connector::GuestConnector;
use crate::forwarder::Forwarder;
use crate::port::{ContainerRef, HostPorts, PortEvent, PortStatus, PublishedPort, Transport};

enum State {
    Open(Forwarder),
    Failed(String),
}

struct Entry {
    container: ContainerRef,
    state: State,
}

pub struct PortTable {
    entries: BTreeMap<PublishedPort, Entry>,
    connector: Arc<dyn GuestConnector>,
    udp_idle_timeout: Duration,
    host_ports: HostPorts,
    events: mpsc::Sender<PortEvent>,
    status: watch::Sender<Vec<PortStatus>>,
}

impl PortTable {
    pub fn new(
        connector: Arc<dyn GuestConnector>,
        udp_idle_timeout: Duration,
        events: mpsc::Sender<PortEvent>,
        status: watch::Sender<Vec<PortStatus>>,
    ) -> PortTable {
        PortTable {
            entries: BTreeMap::new(),
            connector,
            udp_idle_timeout,
            host_ports: HostPorts::default(),
            events,
            status,
        }
    }

    /// Opens ports as `host_ports` says (loopback only, no udp).
    pub fn with_host_ports(mut self, host_ports: HostPorts) -> PortTable {
        self.host_ports = host_ports;
        self
    }

    /// Makes `container`'s ports exactly `ports`: closes the ones it no longer
    /// publishes, opens new ones (and retries failed ones). A port owned by another
    /// container (whose stop was missed) changes owner without being closed on the host:
    /// it forwards to the same guest port either way.
    pub async fn set_container(&mut self, container: ContainerRef, ports: &[PublishedPort]) {
        let wanted: BTreeSet<PublishedPort> = ports.iter().copied().collect();
        let mut events = Vec::new();
        let mut closing = Vec::new();
        let stale: Vec<PublishedPort> = self
            .entries
            .iter()
            .filter(|(port, entry)| entry.container.id == container.id && !wanted.contains(port))
            .map(|(port, _)| *port)
            .collect();
        for port in stale {
            if let Some(entry) = self.entries.remove(&port) {
                closing.extend(close_entry(port, entry, &mut events));
            }
        }
        for port in wanted {
            let entry = self.entries.remove(&port);
            let entry = match entry {
                Some(Entry {
                    container: old,
                    state: State::Open(forwarder),
                }) => {
                    if old != container {
                        if old.id != container.id {
                            info!(%port, from = %old.name, to = %container.name, "port changes owner");
                            events.push(PortEvent::Closed {
                                port,
                                container: old,
                            });
                        }
                        events.push(PortEvent::Opened {
                            port,
                            container: container.clone(),
                        });
                    }
                    Entry {
                        container: container.clone(),
                        state: State::Open(forwarder),
                    }
                }
                Some(Entry {
                    state: State::Failed(_),
                    ..
                })
                | None => self.open(port, &container, &mut events),
            };
            self.entries.insert(port, entry);
        }
        self.finish(closing, events).await;
    }

    /// Closes every port of container `id`.
    pub async fn remove_container(&mut self, id: &str) {
        let ports: Vec<PublishedPort> = self
            .entries
            .iter()
            .filter(|(_, e)| e.container.id == id)
            .map(|(port, _)| *port)
            .collect();
        self.remove_ports(ports).await;
    }

    /// The owners (container or service ids) that have ports in the table.
    pub fn owner_ids(&self) -> Vec<String> {
        let ids: BTreeSet<&str> = self
            .entries
            .values()
            .map(|e| e.container.id.as_str())
            .collect();
        ids.into_iter().map(str::to_string).collect()
    }

    /// Makes the whole table equal to `containers` (each container with its ports):
    /// containers not listed lose their ports.
    pub async fn resync(&mut self, containers: Vec<(ContainerRef, Vec<PublishedPort>)>) {
        let ids: BTreeSet<&str> = containers.iter().map(|(c, _)| c.id.as_str()).collect();
        let gone: Vec<PublishedPort> = self
            .entries
            .iter()
            .filter(|(_, e)| !ids.contains(e.container.id.as_str()))
            .map(|(port, _)| *port)
            .collect();
        self.remove_ports(gone).await;
        for (container, ports) in containers {
            self.set_container(container, &ports).await;
        }
    }

    /// Closes every port.
    pub async fn close_all(&mut self) {
        let ports: Vec<PublishedPort> = self.entries.keys().copied().collect();
        self.remove_ports(ports).await;
    }

    /// The ids of the containers that own ports.
    #[cfg(test)]
    pub fn container_ids(&self) -> BTreeSet<String> {
        self.entries
            .values()
            .map(|e| e.container.id.clone())
            .collect()
    }

    async fn remove_ports(&mut self, ports: Vec<PublishedPort>) {
        if ports.is_empty() {
            return;
        }
        let mut events = Vec::new();
        let mut closing = Vec::new();
        for port in ports {
            if let Some(entry) = self.entries.remove(&port) {
                closing.extend(close_entry(port, entry, &mut events));
            }
        }
        self.finish(closing, events).await;
    }

    fn open(
        &self,
        port: PublishedPort,
        container: &ContainerRef,
        events: &mut Vec<PortEvent>,
    ) -> Entry {
        let opened = match (&self.host_ports.udp_unsupported, port.transport) {
            (Some(reason), Transport::Udp) => Err(reason.clone()),
            _ => Forwarder::open_at(
                port,
                self.host_ports.bind_ip(&port),
                Arc::clone(&self.connector),
                self.udp_idle_timeout,
            )
            .map_err(|err| error_chain(&err)),
        };
        let state = match opened {
            Ok(forwarder) => {
                info!(%port, container = %container.name, "port opened");
                events.push(PortEvent::Opened {
                    port,
                    container: container.clone(),
                });
                State::Open(forwarder)
            }
            Err(error) => {
                warn!(%port, container = %container.name, %error, "cannot open port");
                events.push(PortEvent::Failed {
                    port,
                    container: container.clone(),
                    error: error.clone(),
                });
                State::Failed(error)
            }
        };
        Entry {
            container: container.clone(),
            state,
        }
    }

    /// Closes the sockets, then publishes the status and the events.
    async fn finish(&mut self, closing: Vec<Forwarder>, events: Vec<PortEvent>) {
        for forwarder in closing {
            forwarder.close().await;
        }
        self.status.send_replace(self.snapshot());
        for event in events {
            // A dropped receiver means nobody listens any more; the ports still work.
            let _ = self.events.send(event).await;
        }
    }

    fn snapshot(&self) -> Vec<PortStatus> {
        self.entries
            .iter()
            .map(|(port, entry)| PortStatus {
                port: *port,
                container: entry.container.clone(),
                error: match &entry.state {
                    State::Open(_) => None,
                    State::Failed(error) => Some(error.clone()),
                },
            })
            .collect()
    }
}

/// Takes an entry out of service: its forwarder, to be closed, and a `Closed` event if it
/// was open.
fn close_entry(
    port: PublishedPort,
    entry: Entry,
    events: &mut Vec<PortEvent>,
) -> Option<Forwarder> {
    match entry.state {
        State::Open(forwarder) => {
            info!(%port, container = %entry.container.name, "port closed");
            events.push(PortEvent::Closed {
                port,
                container: entry.container,
            });
            Some(forwarder)
        }
        State::Failed(_) => None,
    }
}

/// `error: cause: cause`, for events and status.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::port::Transport;
    use std::collections::HashMap;

    /// Ports grouped by container id.
    fn by_container(status: &[PortStatus]) -> HashMap<String, Vec<String>> {
        let mut out: HashMap<String, Vec<String>> = HashMap::new();
        for s in status {
            out.entry(s.container.id.clone())
                .or_default()
                .push(s.port.to_string());
        }
        out
    }

    struct NoGuest;

    impl GuestConnector for NoGuest {
        fn connect(&self, _: rmachine_protocol::Service) -> crate::connector::ConnectFuture<'_> {
            Box::pin(async { Err(std::io::Error::from(std::io::ErrorKind::ConnectionRefused)) })
        }
    }

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    fn tcp(host_port: u16) -> PublishedPort {
        PublishedPort {
            transport: Transport::Tcp,
            host_ip: "127.0.0.1".parse().unwrap(),
            host_port,
        }
    }

    fn container(id: &str) -> ContainerRef {
        ContainerRef {
            id: id.into(),
            name: format!("{id}-name"),
        }
    }

    /// A remote engine's table: a port published on any address opens on this host's
    /// loopback, and a udp port is reported failed with the reason, nothing bound.
    #[tokio::test]
    async fn test_remote_ports_bind_loopback_and_refuse_udp() {
        let (table, mut events, status) = table();
        let mut table = table.with_host_ports(HostPorts {
            loopback_only: true,
            udp_unsupported: Some("UDP is not forwarded over SSH".into()),
        });
        let port = free_port();
        let wildcard = PublishedPort {
            host_ip: "0.0.0.0".parse().unwrap(),
            ..tcp(port)
        };
        let udp = PublishedPort {
            transport: Transport::Udp,
            ..tcp(port)
        };
        table.set_container(container("a"), &[wildcard, udp]).await;
        assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
        let snapshot = status.borrow().clone();
        let failed: Vec<_> = snapshot.iter().filter_map(|s| s.error.clone()).collect();
        assert_eq!(failed, ["UDP is not forwarded over SSH"]);
        let mut kinds = Vec::new();
        while let Ok(e) = events.try_recv() {
            kinds.push(match e {
                PortEvent::Opened { .. } => "opened",
                PortEvent::Failed { .. } => "failed",
                PortEvent::Closed { .. } => "closed",
            });
        }
        kinds.sort();
        assert_eq!(kinds, ["failed", "opened"]);
        table.close_all().await;
    }

    fn table() -> (
        PortTable,
        mpsc::Receiver<PortEvent>,
        watch::Receiver<Vec<PortStatus>>,
    ) {
        let (tx, rx) = mpsc::channel(100);
        let (status_tx, status_rx) = watch::channel(Vec::new());
        (
            PortTable::new(Arc::new(NoGuest), Duration::from_secs(60), tx, status_tx),
            rx,
            status_rx,
        )
    }

    fn sorted(mut v: Vec<String>) -> Vec<String> {
        v.sort();
        v
    }

    fn drain(rx: &mut mpsc::Receiver<PortEvent>) -> Vec<String> {
        std::iter::from_fn(|| rx.try_recv().ok())
            .map(|e| match e {
                PortEvent::Opened { port, container } => {
                    format!("opened {} {}", port.host_port, container.id)
                }
                PortEvent::Closed { port, container } => {
                    format!("closed {} {}", port.host_port, container.id)
                }
                PortEvent::Failed {
                    port, container, ..
                } => format!("failed {} {}", port.host_port, container.id),
            })
            .collect()
    }

    #[tokio::test]
    async fn test_set_container_opens_closes_and_keeps() {
        let (mut t, mut rx, status) = table();
        let (a, b, c) = (free_port(), free_port(), free_port());
        t.set_container(container("x"), &[tcp(a), tcp(b)]).await;
        assert_eq!(
            sorted(drain(&mut rx)),
            sorted(vec![format!("opened {a} x"), format!("opened {b} x")])
        );
        t.set_container(container("x"), &[tcp(b), tcp(c)]).await;
        assert_eq!(
            drain(&mut rx),
            vec![format!("closed {a} x"), format!("opened {c} x")]
        );
        assert!(std::net::TcpStream::connect(("127.0.0.1", a)).is_err());
        assert!(std::net::TcpStream::connect(("127.0.0.1", b)).is_ok());
        assert_eq!(by_container(&status.borrow())["x"].len(), 2);
        t.remove_container("x").await;
        assert_eq!(drain(&mut rx).len(), 2);
        assert!(status.borrow().is_empty());
    }

    #[tokio::test]
    async fn test_port_in_use_fails_and_is_retried() {
        let (mut t, mut rx, status) = table();
        let blocker = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let busy = blocker.local_addr().unwrap().port();
        let free = free_port();
        t.set_container(container("x"), &[tcp(busy), tcp(free)])
            .await;
        let events = drain(&mut rx);
        assert!(events.contains(&format!("failed {busy} x")), "{events:?}");
        assert!(events.contains(&format!("opened {free} x")), "{events:?}");
        assert!(status.borrow().iter().any(|s| s.port.host_port == busy
            && s.error.as_deref().is_some_and(|e| e.contains("in use"))));
        drop(blocker);
        t.set_container(container("x"), &[tcp(busy), tcp(free)])
            .await;
        assert_eq!(drain(&mut rx), vec![format!("opened {busy} x")]);
        // A failed port is not reported closed.
        t.close_all().await;
        assert_eq!(drain(&mut rx).len(), 2);
    }

    #[tokio::test]
    async fn test_resync_removes_missing_containers_and_moves_owners() {
        let (mut t, mut rx, status) = table();
        let (a, b) = (free_port(), free_port());
        t.set_container(container("x"), &[tcp(a)]).await;
        t.set_container(container("y"), &[tcp(b)]).await;
        drain(&mut rx);
        t.resync(vec![(container("y"), vec![tcp(b)])]).await;
        assert_eq!(drain(&mut rx), vec![format!("closed {a} x")]);
        // y's stop was missed and z now publishes the same port: it changes owner.
        t.set_container(container("z"), &[tcp(b)]).await;
        assert_eq!(
            drain(&mut rx),
            vec![format!("closed {b} y"), format!("opened {b} z")]
        );
        assert!(std::net::TcpStream::connect(("127.0.0.1", b)).is_ok());
        assert_eq!(t.container_ids(), BTreeSet::from(["z".to_string()]));
        assert_eq!(
            by_container(&status.borrow())["z"],
            vec![format!("127.0.0.1:{b}/tcp")]
        );
        t.resync(Vec::new()).await;
        assert_eq!(drain(&mut rx), vec![format!("closed {b} z")]);
        assert!(std::net::TcpStream::connect(("127.0.0.1", b)).is_err());
    }
}
