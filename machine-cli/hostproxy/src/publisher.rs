//! The publisher: follows the guest engine's container events and keeps the host's
//! ports equal to what running containers publish.
//!
//! One session is: subscribe to `/events` (first, so nothing is missed), resync from
//! the list of running containers, then apply each event as it comes:
//! - `start`: inspect the container and set its ports (a container that is no longer
//!   running by then loses its ports instead);
//! - `die`, `stop`, `destroy`: close its ports.
//!
//! `kill` is not acted on: it only means a signal was sent (`docker kill -s HUP` leaves
//! the container running), and `die` follows when the container does stop. Other events
//! (`exec_*`, `health_status`, …) are filtered out by the engine or ignored.
//!
//! When the engine cannot be reached or its event stream ends, ports stay open (their
//! connections fail until the guest is back) and the publisher reconnects with a
//! growing delay, then resyncs, since events may have been missed meanwhile.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};

use crate::connector::GuestConnector;
use crate::engine::{EngineClient, EngineError, EngineSession, Event, SERVICE_ID_PREFIX};
use crate::port::{ContainerRef, HostPorts, PortEvent, PortStatus, PublishedPort};
use crate::port_table::PortTable;
use crate::share_events::BindEvent;

/// Default time after which a udp peer's guest stream is closed when no datagram went
/// either way.
pub const UDP_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Delay before the first reconnect to the engine, doubled after each failure up to
/// [`RECONNECT_MAX`].
const RECONNECT_MIN: Duration = Duration::from_millis(100);
const RECONNECT_MAX: Duration = Duration::from_secs(5);

/// A session that lasted this long resets the reconnect delay.
const SESSION_HEALTHY: Duration = Duration::from_secs(10);

/// Publishes the ports of a guest's running containers on the host.
pub struct Publisher {
    connector: Arc<dyn GuestConnector>,
    events: mpsc::Sender<PortEvent>,
    status: watch::Sender<Vec<PortStatus>>,
    udp_idle_timeout: Duration,
    host_ports: HostPorts,
    binds: Option<mpsc::UnboundedSender<BindEvent>>,
    /// How many times the table was brought in line with the engine's running containers.
    resyncs: watch::Sender<u64>,
}

/// Follows the engine and publishes ports until `shutdown` is cancelled, then closes them
/// all. Shorthand for [`Publisher::new`] and [`Publisher::run`].
pub async fn run(
    connector: Arc<dyn GuestConnector>,
    events: mpsc::Sender<PortEvent>,
    shutdown: CancellationToken,
) {
    Publisher::new(connector, events).run(shutdown).await;
}

impl Publisher {
    /// A publisher that reaches the guest through `connector` and reports on `events`.
    /// Events are sent with back-pressure: the receiver must keep reading (or be
    /// dropped).
    pub fn new(connector: Arc<dyn GuestConnector>, events: mpsc::Sender<PortEvent>) -> Publisher {
        Publisher {
            connector,
            events,
            status: watch::Sender::new(Vec::new()),
            udp_idle_timeout: UDP_IDLE_TIMEOUT,
            host_ports: HostPorts::default(),
            binds: None,
            resyncs: watch::Sender::new(0),
        }
    }

    /// Also reports the bind mounts of running containers on `binds` (for
    /// [`crate::share_events`]), from the same event stream.
    pub fn with_bind_events(mut self, binds: mpsc::UnboundedSender<BindEvent>) -> Publisher {
        self.binds = Some(binds);
        self
    }

    /// Opens ports as `host_ports` says (a remote engine's: loopback only, no udp).
    pub fn with_host_ports(mut self, host_ports: HostPorts) -> Publisher {
        self.host_ports = host_ports;
        self
    }

    /// Sets how long a udp peer may stay silent (both ways) before its guest stream is
    /// closed (default [`UDP_IDLE_TIMEOUT`]).
    pub fn with_udp_idle_timeout(mut self, timeout: Duration) -> Publisher {
        self.udp_idle_timeout = timeout;
        self
    }

    /// The ports currently published (open, or failed to open), sorted.
    pub fn snapshot(&self) -> Vec<PortStatus> {
        self.status.borrow().clone()
    }

    /// Counts the resyncs with the engine (the first one: the ports of containers that
    /// were already running are open).
    pub fn resyncs(&self) -> watch::Receiver<u64> {
        self.resyncs.subscribe()
    }

    /// Follows changes of [`Publisher::snapshot`].
    pub fn subscribe(&self) -> watch::Receiver<Vec<PortStatus>> {
        self.status.subscribe()
    }

    /// Follows the engine and publishes ports until `shutdown` is cancelled, then closes
    /// them all and returns. Run it once at a time per publisher.
    pub async fn run(&self, shutdown: CancellationToken) {
        let engine = EngineClient::new(Arc::clone(&self.connector));
        let mut table = PortTable::new(
            Arc::clone(&self.connector),
            self.udp_idle_timeout,
            self.events.clone(),
            self.status.clone(),
        )
        .with_host_ports(self.host_ports.clone());
        let mut delay = RECONNECT_MIN;
        loop {
            let started = Instant::now();
            let outcome = tokio::select! {
                _ = shutdown.cancelled() => break,
                outcome = session(&engine, &mut table, self.binds.as_ref(), &self.resyncs).instrument(tracing::info_span!("engine_session")) => outcome,
            };
            match outcome {
                Ok(()) => info!("engine event stream ended, reconnecting"),
                Err(err) => {
                    warn!(error = %err, source = ?std::error::Error::source(&err), "engine unreachable, retrying")
                }
            }
            if started.elapsed() >= SESSION_HEALTHY {
                delay = RECONNECT_MIN;
            }
            debug!(
                delay_ms = delay.as_millis() as u64,
                "waiting before reconnecting to the engine"
            );
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(RECONNECT_MAX);
        }
        table.close_all().await;
        info!("port publisher stopped");
    }
}

/// One connection to the engine: subscribe, resync, then follow events. `Ok` when the
/// engine ended the event stream.
async fn session(
    engine: &EngineClient,
    table: &mut PortTable,
    binds: Option<&mpsc::UnboundedSender<BindEvent>>,
    resyncs: &watch::Sender<u64>,
) -> Result<(), EngineError> {
    let mut events = engine.events().await?;
    let mut requests = engine.session().await?;
    resync(&mut requests, table, binds).await?;
    resyncs.send_modify(|n| *n += 1);
    while let Some(event) = events.next().await? {
        if event.is_service() {
            if requests.is_closed() {
                requests = engine.session().await?;
            }
            services_changed(&mut requests, table).await?;
            continue;
        }
        if !event.is_container() {
            continue;
        }
        let id = event.actor_id();
        match event.action() {
            "start" => {
                if requests.is_closed() {
                    requests = engine.session().await?;
                }
                container_started(&mut requests, table, binds, id).await?;
            }
            "die" | "stop" | "destroy" => {
                debug!(container = id, action = event.action(), "container stopped");
                table.remove_container(id).await;
                report(binds, BindEvent::Stopped { id: id.to_string() });
            }
            _ => log_ignored(&event),
        }
    }
    Ok(())
}

/// A swarm service was created, updated or removed: the services' ports are brought in
/// line with the engine's list (a service event's actor is the service; its ports are in
/// the list, not the event).
async fn services_changed(
    requests: &mut EngineSession,
    table: &mut PortTable,
) -> Result<(), EngineError> {
    let services = requests.services().await?;
    let listed: std::collections::BTreeSet<String> =
        services.iter().map(|s| s.owner().id).collect();
    for gone in table
        .owner_ids()
        .into_iter()
        .filter(|id| id.starts_with(SERVICE_ID_PREFIX) && !listed.contains(id))
    {
        table.remove_container(&gone).await;
    }
    for service in services {
        table
            .set_container(service.owner(), &service.published_ports())
            .await;
    }
    Ok(())
}

/// Sends a bind event if someone listens (a closed receiver only means nobody does).
fn report(binds: Option<&mpsc::UnboundedSender<BindEvent>>, event: BindEvent) {
    if let Some(binds) = binds {
        let _ = binds.send(event);
    }
}

fn log_ignored(event: &Event) {
    debug!(
        container = event.actor_id(),
        action = event.action(),
        "event ignored"
    );
}

async fn container_started(
    requests: &mut EngineSession,
    table: &mut PortTable,
    binds: Option<&mpsc::UnboundedSender<BindEvent>>,
    id: &str,
) -> Result<(), EngineError> {
    match inspect(requests, id).await? {
        Some(found) => {
            report(
                binds,
                BindEvent::Started {
                    id: id.to_string(),
                    sources: found.binds,
                },
            );
            table.set_container(found.container, &found.ports).await
        }
        None => {
            report(binds, BindEvent::Stopped { id: id.to_string() });
            table.remove_container(id).await
        }
    }
    Ok(())
}

/// What the publisher keeps of an inspected container.
struct Inspected {
    container: ContainerRef,
    ports: Vec<PublishedPort>,
    binds: Vec<std::path::PathBuf>,
}

/// A container's owner reference, published ports and bind sources; `None` if it is gone.
/// An engine error about this one container is logged and counts as gone; a broken
/// connection is an error.
async fn inspect(requests: &mut EngineSession, id: &str) -> Result<Option<Inspected>, EngineError> {
    match requests.inspect(id).await {
        Ok(Some(c)) => Ok(Some(Inspected {
            container: c.container_ref(),
            ports: c.published_ports(),
            binds: c.bind_sources(),
        })),
        Ok(None) => Ok(None),
        Err(err @ (EngineError::Status { .. } | EngineError::Parse { .. })) => {
            warn!(container = id, error = %err, "cannot inspect container");
            Ok(None)
        }
        Err(err) => Err(err),
    }
}

async fn resync(
    requests: &mut EngineSession,
    table: &mut PortTable,
    binds: Option<&mpsc::UnboundedSender<BindEvent>>,
) -> Result<(), EngineError> {
    let running = requests.running_containers().await?;
    let mut containers = Vec::with_capacity(running.len());
    let mut bound = Vec::new();
    for summary in running {
        if let Some(found) = inspect(requests, &summary.id).await? {
            bound.push((summary.id.clone(), found.binds));
            containers.push((found.container, found.ports));
        }
    }
    // Swarm services' routing-mesh ports, beside the containers' own.
    for service in requests.services().await? {
        let ports = service.published_ports();
        containers.push((service.owner(), ports));
    }
    let published: usize = containers.iter().map(|(_, ports)| ports.len()).sum();
    info!(
        containers = containers.len(),
        ports = published,
        "resynced with the engine"
    );
    report(binds, BindEvent::Resync(bound));
    table.resync(containers).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake_guest::{FakeContainer, FakeGuest};
    use crate::port::Transport;
    use std::net::SocketAddr;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpStream, UdpSocket};

    /// Waits long enough for anything a test waits on (generous: builds share 2 cores).
    const PATIENCE: Duration = Duration::from_secs(10);

    struct Harness {
        guest: FakeGuest,
        publisher: Arc<Publisher>,
        events: mpsc::Receiver<PortEvent>,
        shutdown: CancellationToken,
        task: tokio::task::JoinHandle<()>,
    }

    async fn start(guest: FakeGuest) -> Harness {
        let (tx, events) = mpsc::channel(100);
        let publisher = Arc::new(Publisher::new(guest.connector(), tx));
        let shutdown = CancellationToken::new();
        let task = tokio::spawn({
            let publisher = Arc::clone(&publisher);
            let shutdown = shutdown.clone();
            async move { publisher.run(shutdown).await }
        });
        Harness {
            guest,
            publisher,
            events,
            shutdown,
            task,
        }
    }

    impl Harness {
        async fn next_event(&mut self) -> PortEvent {
            tokio::time::timeout(PATIENCE, self.events.recv())
                .await
                .expect("no port event in time")
                .expect("events closed")
        }

        /// The next `n` events, each `opened|closed PORT OWNER`, sorted (their order
        /// between owners is not fixed).
        async fn opened_and_closed(&mut self, n: usize) -> Vec<String> {
            let mut seen = Vec::new();
            for _ in 0..n {
                seen.push(match self.next_event().await {
                    PortEvent::Opened { port, container } => {
                        format!("opened {} {}", port.host_port, container.id)
                    }
                    PortEvent::Closed { port, container } => {
                        format!("closed {} {}", port.host_port, container.id)
                    }
                    other => panic!("{other:?}"),
                });
            }
            seen.sort();
            seen
        }

        /// Waits until the publisher listed the containers `n` times: with none
        /// running, its resync is then done and it follows the event stream.
        async fn wait_resynced(&self, n: usize) {
            self.guest.wait_for_lists(n).await;
        }

        async fn stop(self) {
            self.shutdown.cancel();
            tokio::time::timeout(PATIENCE, self.task)
                .await
                .expect("publisher did not stop")
                .unwrap();
        }
    }

    fn free_tcp_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    fn free_udp_port() -> u16 {
        std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    async fn echo_through(host_port: u16, payload: &[u8]) -> Vec<u8> {
        let mut s = TcpStream::connect(("127.0.0.1", host_port)).await.unwrap();
        s.write_all(payload).await.unwrap();
        let mut buf = vec![0u8; payload.len()];
        tokio::time::timeout(PATIENCE, s.read_exact(&mut buf))
            .await
            .unwrap()
            .unwrap();
        buf
    }

    async fn wait_refused(host_port: u16) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            match TcpStream::connect(("127.0.0.1", host_port)).await {
                Err(err) if err.kind() == std::io::ErrorKind::ConnectionRefused => return,
                _ if Instant::now() > deadline => panic!("port {host_port} still open"),
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

    fn start_event(id: &str) -> String {
        format!("{{\"Type\":\"container\",\"Action\":\"start\",\"Actor\":{{\"ID\":\"{id}\",\"Attributes\":{{}}}}}}\n")
    }

    fn die_event(id: &str) -> String {
        format!("{{\"status\":\"die\",\"id\":\"{id}\",\"Type\":\"container\",\"Action\":\"die\",\"Actor\":{{\"ID\":\"{id}\"}}}}\n")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn test_start_event_opens_port_and_tcp_is_echoed() {
        let mut h = start(FakeGuest::new().await).await;
        h.wait_resynced(1).await;
        let host_port = free_tcp_port();
        h.guest
            .add_container(FakeContainer::tcp("c1", "127.0.0.1", host_port).named("/web"));
        let started = Instant::now();
        h.guest.send_events_raw(start_event("c1").as_bytes());
        let event = h.next_event().await;
        eprintln!("port opened {:?} after the start event", started.elapsed());
        let PortEvent::Opened { port, container } = event else {
            panic!("{event:?}")
        };
        assert_eq!(
            port,
            PublishedPort {
                transport: Transport::Tcp,
                host_ip: "127.0.0.1".parse().unwrap(),
                host_port
            }
        );
        assert_eq!(
            (container.id.as_str(), container.name.as_str()),
            ("c1", "web")
        );
        assert_eq!(
            echo_through(host_port, b"hello through the guest").await,
            b"hello through the guest"
        );
        assert_eq!(h.guest.dials(), vec![format!("tcp 127.0.0.1 {host_port}")]);
        let snapshot = h.publisher.snapshot();
        assert_eq!(snapshot.len(), 1);
        assert_eq!(
            (snapshot[0].port.host_port, snapshot[0].error.clone()),
            (host_port, None)
        );
        h.stop().await;
        wait_refused(host_port).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn test_udp_is_echoed_per_peer() {
        let mut h = start(FakeGuest::new().await).await;
        h.wait_resynced(1).await;
        let host_port = free_udp_port();
        h.guest
            .add_container(FakeContainer::udp("u1", "127.0.0.1", host_port));
        h.guest.send_events_raw(start_event("u1").as_bytes());
        assert!(matches!(h.next_event().await, PortEvent::Opened { .. }));
        let host_addr: SocketAddr = ([127, 0, 0, 1], host_port).into();
        let mut clients = Vec::new();
        for i in 0..2u8 {
            let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            for n in 0..3u8 {
                let payload = [b'd', i, n];
                client.send_to(&payload, host_addr).await.unwrap();
                let mut buf = [0u8; 16];
                let (len, from) = tokio::time::timeout(PATIENCE, client.recv_from(&mut buf))
                    .await
                    .unwrap()
                    .unwrap();
                assert_eq!((&buf[..len], from), (&payload[..], host_addr));
            }
            clients.push(client);
        }
        // One guest stream per host peer, not per datagram.
        assert_eq!(
            h.guest.dials(),
            vec![format!("udp 127.0.0.1 {host_port}"); 2]
        );
        h.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn test_udp_session_closes_when_idle() {
        let guest = FakeGuest::new().await;
        let host_port = free_udp_port();
        guest.add_container(FakeContainer::udp("u1", "127.0.0.1", host_port));
        let (tx, mut events) = mpsc::channel(100);
        let publisher =
            Publisher::new(guest.connector(), tx).with_udp_idle_timeout(Duration::from_millis(200));
        let shutdown = CancellationToken::new();
        let task = tokio::spawn({
            let shutdown = shutdown.clone();
            async move { publisher.run(shutdown).await }
        });
        let opened = tokio::time::timeout(PATIENCE, events.recv())
            .await
            .expect("no port event in time");
        assert!(
            matches!(opened, Some(PortEvent::Opened { .. })),
            "{opened:?}"
        );
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut buf = [0u8; 16];
        client
            .send_to(b"one", ("127.0.0.1", host_port))
            .await
            .unwrap();
        tokio::time::timeout(PATIENCE, client.recv_from(&mut buf))
            .await
            .unwrap()
            .unwrap();
        let deadline = Instant::now() + PATIENCE;
        while guest.open_udp_streams() != 0 {
            assert!(Instant::now() < deadline, "idle udp stream was not closed");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The next datagram dials again.
        client
            .send_to(b"two", ("127.0.0.1", host_port))
            .await
            .unwrap();
        let (len, _) = tokio::time::timeout(PATIENCE, client.recv_from(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&buf[..len], b"two");
        assert_eq!(guest.dials().len(), 2);
        shutdown.cancel();
        tokio::time::timeout(PATIENCE, task)
            .await
            .expect("publisher did not stop")
            .unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn test_die_event_closes_port() {
        let mut h = start(FakeGuest::new().await).await;
        h.wait_resynced(1).await;
        let host_port = free_tcp_port();
        h.guest
            .add_container(FakeContainer::tcp("c1", "127.0.0.1", host_port));
        h.guest.send_events_raw(start_event("c1").as_bytes());
        assert!(matches!(h.next_event().await, PortEvent::Opened { .. }));
        assert_eq!(echo_through(host_port, b"x").await, b"x");
        h.guest.set_running("c1", false);
        h.guest.send_events_raw(die_event("c1").as_bytes());
        let event = h.next_event().await;
        assert!(
            matches!(&event, PortEvent::Closed { port, .. } if port.host_port == host_port),
            "{event:?}"
        );
        // Closed is reported after the socket is closed.
        let err = TcpStream::connect(("127.0.0.1", host_port))
            .await
            .expect_err("port still open");
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
        assert!(h.publisher.snapshot().is_empty());
        h.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn test_port_in_use_is_reported_and_others_open() {
        let mut h = start(FakeGuest::new().await).await;
        h.wait_resynced(1).await;
        let blocker = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let busy = blocker.local_addr().unwrap().port();
        let free = free_tcp_port();
        h.guest
            .add_container(FakeContainer::tcp("c1", "127.0.0.1", busy).with_tcp("127.0.0.1", free));
        h.guest.send_events_raw(start_event("c1").as_bytes());
        let mut failed = None;
        let mut opened = None;
        for _ in 0..2 {
            match h.next_event().await {
                PortEvent::Failed { port, error, .. } => failed = Some((port.host_port, error)),
                PortEvent::Opened { port, .. } => opened = Some(port.host_port),
                other => panic!("{other:?}"),
            }
        }
        let (failed_port, error) = failed.expect("no failed event");
        assert_eq!(failed_port, busy);
        assert!(error.contains("in use"), "{error}");
        assert_eq!(opened, Some(free));
        assert_eq!(echo_through(free, b"still works").await, b"still works");
        // The publisher keeps following events after the failure.
        let other = free_tcp_port();
        h.guest
            .add_container(FakeContainer::tcp("c2", "127.0.0.1", other));
        h.guest.send_events_raw(start_event("c2").as_bytes());
        assert!(
            matches!(h.next_event().await, PortEvent::Opened { port, .. } if port.host_port == other)
        );
        let failed_rows: Vec<u16> = h
            .publisher
            .snapshot()
            .iter()
            .filter(|s| s.error.is_some())
            .map(|s| s.port.host_port)
            .collect();
        assert_eq!(failed_rows, vec![busy]);
        drop(blocker);
        h.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn test_resync_on_reconnect_picks_up_missed_changes() {
        let guest = FakeGuest::new().await;
        let (early, late) = (free_tcp_port(), free_tcp_port());
        guest.add_container(FakeContainer::tcp("early", "127.0.0.1", early));
        let mut h = start(guest).await;
        // The initial resync opens the container that ran before the publisher.
        assert!(
            matches!(h.next_event().await, PortEvent::Opened { port, .. } if port.host_port == early)
        );
        h.wait_resynced(1).await;
        let mut resyncs = h.publisher.resyncs();
        let first = *tokio::time::timeout(PATIENCE, resyncs.wait_for(|n| *n >= 1))
            .await
            .expect("first resync counted")
            .unwrap();
        assert_eq!(first, 1);
        let connects = h.guest.event_connects();
        // The stream breaks; meanwhile one container stops and one starts, unseen.
        h.guest.set_events_status(503);
        h.guest.end_event_streams();
        h.guest.set_running("early", false);
        h.guest
            .add_container(FakeContainer::tcp("late", "127.0.0.1", late));
        // The publisher retries with a delay, not in a busy loop, while the engine fails.
        tokio::time::sleep(Duration::from_millis(700)).await;
        let attempts = h.guest.event_connects() - connects;
        assert!(
            (1..=6).contains(&attempts),
            "{attempts} reconnects in 700 ms"
        );
        h.guest.set_events_status(200);
        let seen = h.opened_and_closed(2).await;
        assert_eq!(
            seen,
            vec![
                format!("closed {early} early"),
                format!("opened {late} late")
            ]
        );
        assert_eq!(echo_through(late, b"late").await, b"late");
        wait_refused(early).await;
        // The reconnect's resync counted too.
        assert_eq!(*h.publisher.resyncs().borrow(), 2);
        h.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn test_swarm_service_ports_follow_service_events() {
        let guest = FakeGuest::new().await;
        let (web, api) = (free_tcp_port(), free_tcp_port());
        guest.set_services(Some(vec![("s1", "web", vec![web])]));
        let mut h = start(guest).await;
        // The resync opens the routing mesh's port, owned by the service, dialed on the
        // guest's loopback.
        let event = h.next_event().await;
        assert!(
            matches!(&event, PortEvent::Opened { port, container }
                if port.host_port == web && container.id == "service:s1" && container.name == "service web"),
            "{event:?}"
        );
        assert_eq!(echo_through(web, b"mesh").await, b"mesh");
        assert!(
            h.guest
                .dials()
                .iter()
                .any(|d| d.contains(&format!("127.0.0.1 {web}"))
                    || d.contains(&format!("127.0.0.1:{web}"))),
            "{:?}",
            h.guest.dials()
        );
        // A service event: web removed, api created; the list is what counts.
        h.guest.set_services(Some(vec![("s2", "api", vec![api])]));
        h.guest.send_events_raw(
            b"{\"Type\":\"service\",\"Action\":\"create\",\"Actor\":{\"ID\":\"s2\"}}\n",
        );
        let seen = h.opened_and_closed(2).await;
        assert_eq!(
            seen,
            vec![
                format!("closed {web} service:s1"),
                format!("opened {api} service:s2")
            ]
        );
        assert_eq!(echo_through(api, b"api").await, b"api");
        wait_refused(web).await;
        // The swarm left (the engine is no manager any more): its ports close, nothing breaks.
        h.guest.set_services(None);
        h.guest.send_events_raw(
            b"{\"Type\":\"service\",\"Action\":\"remove\",\"Actor\":{\"ID\":\"s2\"}}\n",
        );
        let event = h.next_event().await;
        assert!(
            matches!(&event, PortEvent::Closed { port, .. } if port.host_port == api),
            "{event:?}"
        );
        // An engine answering the service list with garbage: containers' ports still open.
        h.guest.set_services_garbage(true);
        h.guest.send_events_raw(
            b"{\"Type\":\"service\",\"Action\":\"update\",\"Actor\":{\"ID\":\"s2\"}}\n",
        );
        let port = free_tcp_port();
        h.guest
            .add_container(FakeContainer::tcp("c9", "127.0.0.1", port));
        h.guest.send_events_raw(start_event("c9").as_bytes());
        let event = h.next_event().await;
        assert!(
            matches!(&event, PortEvent::Opened { port: p, .. } if p.host_port == port),
            "{event:?}"
        );
        assert_eq!(h.guest.event_connects(), 1, "the event stream stayed up");
        h.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn test_garbage_and_split_events_are_handled() {
        let mut h = start(FakeGuest::new().await).await;
        h.wait_resynced(1).await;
        let host_port = free_tcp_port();
        h.guest
            .add_container(FakeContainer::tcp("c1", "127.0.0.1", host_port));
        h.guest
            .send_events_raw(b"this is not json\n{\"Type\":\"container\"\n\x00\xff\n[]\n");
        h.guest.send_events_raw(
            b"{\"Type\":\"container\",\"Action\":\"exec_start: sh\",\"Actor\":{\"ID\":\"c1\"}}\n",
        );
        h.guest.send_events_raw(
            b"{\"Type\":\"network\",\"Action\":\"start\",\"Actor\":{\"ID\":\"c1\"}}\n",
        );
        let event = start_event("c1");
        let (a, b) = event.split_at(17);
        h.guest.send_events_raw(a.as_bytes());
        tokio::time::sleep(Duration::from_millis(50)).await;
        h.guest.send_events_raw(b.as_bytes());
        let event = h.next_event().await;
        assert!(
            matches!(&event, PortEvent::Opened { port, .. } if port.host_port == host_port),
            "{event:?}"
        );
        // Only the start event was acted on: one inspect after the initial resync.
        assert_eq!(h.guest.inspects(), vec!["c1".to_string()]);
        assert_eq!(
            h.guest.event_connects(),
            1,
            "the garbage broke the event stream"
        );
        h.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn test_start_of_a_container_already_gone_publishes_nothing() {
        let mut h = start(FakeGuest::new().await).await;
        h.wait_resynced(1).await;
        let host_port = free_tcp_port();
        h.guest
            .add_container(FakeContainer::tcp("c1", "127.0.0.1", host_port));
        h.guest.set_running("c1", false);
        h.guest.send_events_raw(start_event("c1").as_bytes());
        h.guest.send_events_raw(start_event("unknown").as_bytes());
        let other = free_tcp_port();
        h.guest
            .add_container(FakeContainer::tcp("c2", "127.0.0.1", other));
        h.guest.send_events_raw(start_event("c2").as_bytes());
        let event = h.next_event().await;
        assert!(
            matches!(&event, PortEvent::Opened { port, .. } if port.host_port == other),
            "{event:?}"
        );
        assert_eq!(h.publisher.snapshot().len(), 1);
        h.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn test_shutdown_closes_every_port() {
        let guest = FakeGuest::new().await;
        let (a, b) = (free_tcp_port(), free_udp_port());
        guest.add_container(FakeContainer::tcp("c1", "127.0.0.1", a).with_udp("127.0.0.1", b));
        let mut h = start(guest).await;
        for _ in 0..2 {
            assert!(matches!(h.next_event().await, PortEvent::Opened { .. }));
        }
        let Harness {
            publisher,
            mut events,
            shutdown,
            task,
            ..
        } = h;
        shutdown.cancel();
        tokio::time::timeout(PATIENCE, task)
            .await
            .expect("publisher did not stop")
            .unwrap();
        let closed: Vec<PortEvent> = std::iter::from_fn(|| events.try_recv().ok()).collect();
        assert_eq!(closed.len(), 2, "{closed:?}");
        assert!(closed.iter().all(|e| matches!(e, PortEvent::Closed { .. })));
        assert!(publisher.snapshot().is_empty());
        assert!(std::net::TcpListener::bind(("127.0.0.1", a)).is_ok());
        assert!(std::net::UdpSocket::bind(("127.0.0.1", b)).is_ok());
    }
}
