//! The host agent of an ssh machine: one SSH connection to the host (keepalives; when it
//! drops, reconnected with a growing delay, the pinned host key checked every time),
//! through which it serves the machine's local `docker.sock` with the same Engine API
//! proxy as a VM machine's (each client connection a direct-streamlocal channel to the
//! host's `/var/run/docker.sock`) and publishes the remote containers' TCP ports on this
//! host's loopback with the same event-driven publisher (each connection a direct-tcpip
//! channel to the port on the host). UDP cannot travel over SSH channels: such ports are
//! reported as not published. Stopping closes the local socket and ports and the
//! connection; the remote engine and its containers are left running.

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use rmachine_hostproxy::connector::{ConnectFuture, DialFuture, GuestDialError};
use rmachine_hostproxy::{GuestConnector, GuestIo, HostPorts, PortEvent, Publisher};
use rmachine_machine::ssh::remote::{self, RemoteRecord};
use rmachine_machine::ssh::{self, Auth, Secret, Session, SshError, SshSettings};
use rmachine_machine::state::State;
use rmachine_machine::store::Machine;
use rmachine_machine::sys::local_socket::LocalListener;
use rmachine_protocol::dial::Proto;
use rmachine_protocol::Service;
use tokio::io::BufReader;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::{SharedState, StopReason};

/// Why UDP ports of an ssh machine are not forwarded (`rmachine status` shows it).
pub const UDP_OVER_SSH: &str =
    "UDP is not forwarded over SSH (ssh machines publish TCP ports only)";

/// Delays between reconnection attempts: doubled from the first up to the last.
const RECONNECT_MIN: Duration = Duration::from_millis(250);
const RECONNECT_MAX: Duration = Duration::from_secs(10);
/// How often the connection's liveness is looked at.
const WATCH_INTERVAL: Duration = Duration::from_millis(250);
/// How long a new Engine API or port connection waits for a connection being made again.
const WAIT_CONNECTED: Duration = Duration::from_secs(10);

/// The one SSH connection, made again when it drops.
struct Link {
    machine: Machine,
    settings: SshSettings,
    auth: Auth,
    current: watch::Sender<Option<Arc<Session>>>,
    /// Asks the supervisor to look at the connection now (a channel failed).
    kick: tokio::sync::Notify,
}

impl Link {
    async fn connect(&self) -> Result<Session, SshError> {
        remote::connect(
            &self.machine.files,
            &self.settings,
            &self.auth,
            None,
            &mut |f| {
                tracing::warn!(
                    fingerprint = f,
                    "no host key was pinned: pinned the one offered"
                )
            },
        )
        .await
        .map(|c| c.session)
    }

    /// The connection, waiting up to [`WAIT_CONNECTED`] while it is being made again.
    async fn session(&self) -> io::Result<Arc<Session>> {
        let mut rx = self.current.subscribe();
        let wait = async move {
            rx.wait_for(|s| s.as_ref().is_some_and(|s| !s.is_closed()))
                .await
                .ok()
                .and_then(|s| s.clone())
        };
        match tokio::time::timeout(WAIT_CONNECTED, wait).await {
            Ok(Some(s)) => Ok(s),
            _ => Err(io::Error::new(
                io::ErrorKind::NotConnected,
                format!(
                    "the ssh connection to {} is down and being made again",
                    self.settings.target()
                ),
            )),
        }
    }

    /// Notes a failed channel: when the connection is gone, the supervisor reconnects
    /// at once.
    fn failed(&self, session: &Session) {
        if session.is_closed() {
            self.kick.notify_one();
        }
    }

    /// Keeps the connection up: when it closes, reconnects with a growing delay and says
    /// so in the machine's state. A changed host key ends it with that error (no
    /// reconnection is then safe).
    async fn supervise(self: Arc<Self>, state: SharedState) -> anyhow::Result<()> {
        let target = self.settings.target().to_string();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(WATCH_INTERVAL) => {}
                _ = self.kick.notified() => {}
            }
            let alive = self
                .current
                .borrow()
                .as_ref()
                .is_some_and(|s| !s.is_closed());
            if alive {
                continue;
            }
            tracing::warn!(%target, "the ssh connection closed; connecting again");
            self.current.send_replace(None);
            let lost = Instant::now();
            let mut delay = RECONNECT_MIN;
            let mut attempt = 1u32;
            loop {
                state.update(|s| {
                    s.detail =
                        format!("connection to {target} lost; connecting again (attempt {attempt})")
                });
                match self.connect().await {
                    Ok(session) => {
                        tracing::info!(%target, attempt, after_ms = lost.elapsed().as_millis() as u64, "ssh connection made again");
                        self.current.send_replace(Some(Arc::new(session)));
                        state.update(|s| s.detail.clear());
                        break;
                    }
                    Err(
                        e @ (SshError::HostKeyChanged { .. } | SshError::HostKeyMismatch { .. }),
                    ) => {
                        return Err(anyhow!(e).context("connecting to the host again"));
                    }
                    Err(e) => {
                        tracing::warn!(error = %rmachine_machine::lifecycle::error_chain(&e), attempt, delay_ms = delay.as_millis() as u64, "cannot connect to the host; trying again");
                    }
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(RECONNECT_MAX);
                attempt += 1;
            }
        }
    }
}

/// "Connect to guest service S" for an ssh machine: the engine service is the remote
/// engine's socket, and dials are direct-tcpip channels.
struct SshConnector {
    link: Arc<Link>,
}

impl GuestConnector for SshConnector {
    fn connect(&self, service: Service) -> ConnectFuture<'_> {
        Box::pin(async move {
            if service != Service::Engine {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!("an ssh machine has no guest {service:?} service"),
                ));
            }
            let session = self.link.session().await?;
            match session.open_unix(ssh::REMOTE_DOCKER_SOCKET).await {
                Ok(stream) => Ok(Box::new(stream) as Box<dyn GuestIo>),
                Err(e) => {
                    self.link.failed(&session);
                    Err(io::Error::new(
                        io::ErrorKind::ConnectionRefused,
                        rmachine_machine::lifecycle::error_chain(&e),
                    ))
                }
            }
        })
    }

    fn dial<'a>(&'a self, request: &'a rmachine_protocol::dial::DialRequest) -> DialFuture<'a> {
        Box::pin(async move {
            if request.proto != Proto::Tcp {
                return Err(GuestDialError::Unsupported(UDP_OVER_SSH.into()));
            }
            let session = self.link.session().await.map_err(GuestDialError::Connect)?;
            match session
                .open_tcp(&request.guest_addr.to_string(), request.guest_port)
                .await
            {
                Ok(stream) => Ok(BufReader::new(Box::new(stream) as Box<dyn GuestIo>)),
                Err(e) => {
                    self.link.failed(&session);
                    Err(GuestDialError::Connect(io::Error::new(
                        io::ErrorKind::ConnectionRefused,
                        rmachine_machine::lifecycle::error_chain(&e),
                    )))
                }
            }
        })
    }
}

/// The ssh key's passphrase, which `rmachine start` hands over on stdin (never stored):
/// empty stdin means none.
async fn passphrase_from_stdin() -> Option<Secret> {
    let read = tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).ok()?;
        let line = line.trim_end_matches(['\r', '\n']).to_string();
        (!line.is_empty()).then_some(Secret(line))
    });
    tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .ok()
        .and_then(|r| r.ok())
        .flatten()
}

/// Serves an ssh machine until a stop is asked for.
pub(crate) async fn serve(
    machine: &Machine,
    state: &SharedState,
    stop_tx: mpsc::Sender<StopReason>,
    stop_rx: &mut mpsc::Receiver<StopReason>,
) -> anyhow::Result<()> {
    let settings = machine
        .spec
        .ssh
        .clone()
        .context("machine.toml has no [ssh] settings")?;
    let target = settings.target();
    let record = RemoteRecord::read(&machine.files.remote_record());
    state.update(|s| {
        s.backend = Some("ssh".into());
        s.backend_reason = Some(format!(
            "the engine runs on {target}{}",
            record
                .as_ref()
                .map(|r| format!(" ({} on {})", r.probe.os.pretty_name, r.probe.arch))
                .unwrap_or_default()
        ));
        s.detail = format!("connecting to {target}");
    });
    let control_task = crate::control::serve(machine, state.clone(), stop_tx.clone())?;
    let signals = tokio::spawn({
        let stop_tx = stop_tx.clone();
        async move {
            rmachine_machine::sys::signal::stop_requested().await;
            tracing::info!("signal received: stopping");
            let _ = stop_tx.send(StopReason::Requested { save: false }).await;
        }
    });
    let auth = Auth {
        key: settings.key.clone(),
        passphrase: passphrase_from_stdin().await,
    };
    let link = Arc::new(Link {
        machine: machine.clone(),
        settings: settings.clone(),
        auth,
        current: watch::Sender::new(None),
        kick: tokio::sync::Notify::new(),
    });
    let started = Instant::now();
    let session = tokio::select! {
        r = link.connect() => r.with_context(|| format!("connecting to {target}"))?,
        _ = stop_rx.recv() => { control_task.abort(); signals.abort(); return Ok(()) }
    };
    let ping_ms = started.elapsed().as_millis() as u64;
    tracing::info!(%target, ping_ms, "ssh connection made");
    state.update(|s| {
        s.ping_ms = Some(ping_ms);
        s.detail = "reaching the engine".into();
    });
    let version = remote::engine_version(&session).await.with_context(|| {
        format!(
            "the engine on {target} does not answer at {} (is it running? `sudo systemctl start docker` there)",
            ssh::REMOTE_DOCKER_SOCKET
        )
    })?;
    tracing::info!(engine = %version, "remote engine answers");
    link.current.send_replace(Some(Arc::new(session)));

    let shutdown = CancellationToken::new();
    let supervisor = tokio::spawn({
        let (link, state, shutdown) = (link.clone(), state.clone(), shutdown.clone());
        async move {
            tokio::select! {
                _ = shutdown.cancelled() => Ok(()),
                r = link.supervise(state) => r,
            }
        }
    });
    let connector: Arc<dyn GuestConnector> = Arc::new(SshConnector { link: link.clone() });

    let docker_endpoint = machine.files.docker_endpoint();
    let listener = LocalListener::bind(&docker_endpoint)
        .with_context(|| format!("cannot listen on {docker_endpoint}"))?;
    let policy = rmachine_hostproxy::RemotePolicy {
        machine: machine.name.clone(),
        host: target.to_string(),
        local_home: dirs_home(),
    };
    let engine_task = tokio::spawn(rmachine_hostproxy::serve_engine(
        listener,
        machine.name.clone(),
        connector.clone(),
        Arc::new(policy),
        rmachine_hostproxy::never_paused(),
    ));
    let ports_task = publish_ports(connector, state.clone(), shutdown.clone());
    state.update(|s| {
        s.state = State::Running;
        s.engine_ready_ms = Some(started.elapsed().as_millis() as u64);
        s.detail.clear();
    });
    tracing::info!(endpoint = %docker_endpoint, "machine running");

    let mut supervisor = supervisor;
    let result = tokio::select! {
        _ = stop_rx.recv() => {
            state.update(|s| { s.state = State::Stopping; s.detail = "closing the local socket, ports and ssh connection".into(); });
            Ok(())
        }
        r = &mut supervisor => match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e),
            Err(e) => Err(anyhow!("the ssh connection's supervisor ended: {e}")),
        },
    };
    shutdown.cancel();
    let _ = ports_task.await;
    engine_task.abort();
    let _ = engine_task.await;
    supervisor.abort();
    if let Some(session) = link.current.send_replace(None) {
        session.disconnect().await;
    }
    control_task.abort();
    signals.abort();
    result
}

fn dirs_home() -> Option<std::path::PathBuf> {
    std::env::var_os("HOME")
        .or_else(|| std::env::var_os("USERPROFILE"))
        .map(std::path::PathBuf::from)
        .filter(|p| p.is_absolute())
}

/// Publishes the remote containers' TCP ports on this host's loopback and mirrors them
/// into `state.json` (with the address they open on here).
fn publish_ports(
    connector: Arc<dyn GuestConnector>,
    state: SharedState,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let host_ports = HostPorts {
        loopback_only: true,
        udp_unsupported: Some(UDP_OVER_SSH.into()),
    };
    let (events_tx, events_rx) = mpsc::channel::<PortEvent>(64);
    let publisher =
        Arc::new(Publisher::new(connector, events_tx).with_host_ports(host_ports.clone()));
    crate::mirror_ports(&publisher, events_rx, host_ports, state, shutdown.clone());
    tokio::spawn(async move { publisher.run(shutdown).await })
}
