//! The host agent: one detached process per running machine (`rmachine hostagent NAME`).
//! It boots the VM with the chosen backend and supervises it, serves the Engine API on
//! `docker.sock`, publishes container ports on the host, answers `hostagent.sock`, and
//! keeps `state.json` current. A VM that dies moves the machine to the error state with
//! the console's last lines. The same crate runs the other background process, a
//! network's switch ([`run_network_switch`]).
//!
//! It is the body of a process: its errors end in its log and in `state.json`, so it
//! reports them with `anyhow` context chains like a binary.
#![forbid(unsafe_code)]

mod control;
mod host_disk;
mod launch;
mod phases;
// QEMU's machine protocol: a unix socket.
#[cfg(unix)]
mod qmp;
#[cfg(not(unix))]
#[path = "qmp_unsupported.rs"]
mod qmp;
mod remote;
// Networks between machines: their switches run on unix sockets.
#[cfg(unix)]
mod networks;
#[cfg(not(unix))]
#[path = "networks_unsupported.rs"]
mod networks;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context};
use rmachine_machine::driver::{choose_backend, Backend, BackendChoice};
use rmachine_machine::guest_link::{Carrier, ControlClient};
use rmachine_machine::paths::Paths;
use rmachine_machine::saved_state::{self, Refusal};
use rmachine_machine::state::{MachineState, StartKind, State, StopReport};
use rmachine_machine::store::{Machine, Store};
use rmachine_machine::sys::local_socket::LocalListener;
use rmachine_machine::sys::process::ProcessId;
use rmachine_protocol::control::{GuestInfo, Reply, Request, ServiceState};
use tokio::sync::mpsc;

/// Boot to agent ping, per accelerator (software emulation is slow).
const PING_TIMEOUT: Duration = Duration::from_secs(600);
const ENGINE_TIMEOUT: Duration = Duration::from_secs(600);
/// Boots tried before a VM that dies during boot is the machine's error.
const BOOT_ATTEMPTS: u32 = 2;
/// How often the switches of the machine's networks are looked at.
const SWITCH_CHECK: Duration = Duration::from_secs(5);
/// Clean shutdown before the VM is killed.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(60);

/// The machine's state, shared by the host agent's tasks; every change is written.
#[derive(Clone)]
pub(crate) struct SharedState {
    inner: Arc<Mutex<MachineState>>,
    path: std::path::PathBuf,
}

impl SharedState {
    pub(crate) fn update(&self, f: impl FnOnce(&mut MachineState)) {
        let mut s = self
            .inner
            .lock()
            .expect("state lock is never poisoned: no panics while held");
        f(&mut s);
        if let Err(e) = s.write(&self.path) {
            tracing::error!(error = %e, path = %self.path.display(), "cannot write state");
        }
    }

    pub(crate) fn snapshot(&self) -> MachineState {
        self.inner
            .lock()
            .expect("state lock is never poisoned: no panics while held")
            .clone()
    }
}

/// Why the host agent is winding down.
#[derive(Debug)]
pub(crate) enum StopReason {
    /// `rmachine stop` (`save`: save the VM where the backend can).
    Requested { save: bool },
    /// A signal (the host shutting down, a user's `kill`): a full shutdown.
    Signal,
}

pub use networks::run_network_switch;

/// Logs of the background processes (to their stderr, their log file): `RMACHINE_LOG`
/// filters, `info` by default.
fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RMACHINE_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_ansi(false)
        .init();
}

/// Runs the host agent of machine `name` until the machine stops.
pub fn run(name: &str) -> anyhow::Result<()> {
    init_logging();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(run_async(name))
}

async fn run_async(name: &str) -> anyhow::Result<()> {
    let store = Store::new(Paths::from_env()?);
    let machine = store.load(name)?;
    let _span = tracing::info_span!("hostagent", machine = %name).entered();
    tracing::info!(pid = std::process::id(), "host agent starting");
    // The state the start began with: it names a VM that a host agent which died left
    // running, to take over (`MachineState::starting_after`).
    let previous = MachineState::read(&machine.files.state());
    let mut initial = MachineState::starting_after(&previous);
    initial.detail = "preparing".into();
    initial.hostagent = Some(ProcessId::current());
    initial.started_at_unix = Some(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    );
    let state = SharedState {
        inner: Arc::new(Mutex::new(initial)),
        path: machine.files.state(),
    };
    state.update(|_| {});

    let (stop_tx, mut stop_rx) = mpsc::channel::<StopReason>(4);
    let result = serve(&machine, &previous, &state, stop_tx, &mut stop_rx).await;
    cleanup_sockets(&machine);
    match result {
        Ok(()) => {
            // What the last start was and took stays readable after the stop.
            state.update(|s| *s = s.stopped_after(s.last_stop.clone()));
            tracing::info!("machine stopped");
            Ok(())
        }
        Err(e) => {
            let reason = format!("{e:#}");
            tracing::error!(error = %reason, "machine failed");
            // The VM and its helpers were killed as the host agent's own (its children)
            // or taken-over processes were dropped.
            state.update(|s| {
                s.state = State::Error(reason.clone());
                s.detail.clear();
                s.hostagent = None;
                s.carrier = None;
                s.vm = None;
                s.helpers.clear();
            });
            Err(e)
        }
    }
}

fn cleanup_sockets(machine: &Machine) {
    for endpoint in [
        machine.files.docker_endpoint(),
        machine.files.hostagent_endpoint(),
    ] {
        endpoint.remove_stale();
    }
}

async fn serve(
    machine: &Machine,
    previous: &MachineState,
    state: &SharedState,
    stop_tx: mpsc::Sender<StopReason>,
    stop_rx: &mut mpsc::Receiver<StopReason>,
) -> anyhow::Result<()> {
    // An ssh machine: no VM, one SSH connection to the host serves everything.
    if machine.spec.driver == rmachine_machine::config::DriverKind::Ssh {
        return remote::serve(machine, state, stop_tx, stop_rx).await;
    }
    let choice = choose_backend(machine.spec.driver, machine.spec.arch);
    tracing::info!(backend = choice.backend.as_str(), accel = choice.accel.as_str(), reason = %choice.reason, "backend chosen");
    state.update(|s| {
        s.backend = Some(choice.backend.as_str().to_string());
        s.backend_reason = Some(choice.reason.clone());
    });

    // The host agent's own socket first, so `rmachine stop` works while booting.
    let control_task = control::serve(machine, state.clone(), stop_tx.clone())?;
    let _signals = tokio::spawn(forward_signals(stop_tx.clone()));

    // Hardware KVM boots in about a second; software emulation takes far longer.
    let (ping_timeout, engine_timeout) = match choice.accel {
        rmachine_machine::accel::Accel::Tcg => (PING_TIMEOUT, ENGINE_TIMEOUT),
        _ => (Duration::from_secs(60), Duration::from_secs(180)),
    };
    let phases = phases::Phases::begin(state.clone());
    let Some(Started {
        mut vm,
        carrier,
        boot,
        ping_ms,
        kind,
        steps,
    }) = take_over_or_boot(machine, previous, &choice, state, stop_rx, ping_timeout).await?
    else {
        return Ok(());
    };
    tracing::info!(ping_ms, "agent answered ping");
    state.update(|s| s.start_kind = Some(kind));
    // QEMU's events from now on: a full host disk pauses the VM, said and undone here.
    let mut disk_monitor = match choice.backend {
        Backend::Qemu => host_disk::Monitor::start(machine, state).await,
        Backend::Vmm => host_disk::Monitor::none(machine),
    };
    let first_step = match kind {
        StartKind::Boot => "VM process started",
        StartKind::TakeOver => "took over the running VM",
        StartKind::Resume => "QEMU started, waiting for the saved state",
    };
    phases.mark_at(first_step, phases.ms_at(boot));
    for (name, at) in &steps {
        phases.mark_at(name, phases.ms_at(*at));
    }
    phases.mark("agent answered ping");
    // A first reading of the guest's clock, to measure its rate against the host's.
    let first_reading = guest_clock(&carrier).await.map(|uptime_s| phases::Anchor {
        uptime_s,
        at_ms: phases.now_ms(),
    });
    // A guest whose clock could not be set still serves: say so and go on. A resumed
    // guest's clock stood still while it was saved: this sets it to the host's.
    match sync_time(&carrier).await {
        Ok(offset_ns) => {
            tracing::info!(offset_ms = offset_ns / 1_000_000, "guest clock set");
            if kind == StartKind::Resume {
                phases.mark("guest clock set from the host's");
            }
        }
        Err(e) => tracing::warn!(error = %format!("{e:#}"), "cannot set the guest's clock"),
    }
    state.update(|s| {
        s.ping_ms = Some(ping_ms);
        s.detail = "engine starting".into();
    });
    let info = tokio::select! {
        r = wait_engine(&carrier, engine_timeout) => r?,
        status = vm.vm.wait() => return Err(vm_died(machine, status)),
        _ = stop_rx.recv() => { shutdown(&carrier, &mut vm).await; return Ok(()) }
    };
    let engine_ms = boot.elapsed().as_millis() as u64;
    tracing::info!(engine_ms, "engine ready");
    // A VM taken over booted long ago: only a boot's guest steps belong to this start.
    if kind == StartKind::Boot {
        phases.guest(&info, phases.now_ms(), first_reading);
    }
    phases.mark("engine ready (seen by the host agent)");

    let docker_endpoint = machine.files.docker_endpoint();
    let listener = LocalListener::bind(&docker_endpoint)
        .with_context(|| format!("cannot listen on {docker_endpoint}"))?;
    let policy = rmachine_hostproxy::MachinePolicy {
        machine: machine.name.clone(),
        shares: (machine.spec.mounts.iter())
            .map(|m| rmachine_hostproxy::Share {
                host_path: m.path.clone(),
                read_only: m.read_only,
            })
            .collect(),
        host_gateway: true,
    };
    let engine_task = tokio::spawn(rmachine_hostproxy::serve_engine(
        listener,
        machine.name.clone(),
        Arc::new(carrier.as_ref().clone()),
        Arc::new(policy),
        disk_monitor.paused_watch(),
    ));
    let ports_shutdown = tokio_util::sync::CancellationToken::new();
    let shares: Vec<std::path::PathBuf> =
        machine.spec.mounts.iter().map(|m| m.path.clone()).collect();
    let ports_task = publish_ports(
        carrier.clone(),
        state.clone(),
        shares,
        ports_shutdown.clone(),
        phases.clone(),
    );
    // The docker CLI's own path answers before the machine is called running (the
    // published ports of containers that kept running follow on their own).
    match phases::engine_ping(&docker_endpoint).await {
        Ok(()) => phases.mark("docker.sock answers _ping"),
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), endpoint = %docker_endpoint, "the engine does not answer through the machine's docker endpoint")
        }
    }

    // A VM paused for lack of host space meanwhile stays `paused` until it continues.
    let paused = disk_monitor.paused();
    state.update(|s| {
        if !paused {
            s.state = State::Running;
            s.detail.clear();
        }
        s.engine_ready_ms = Some(engine_ms);
    });
    tracing::info!(endpoint = %docker_endpoint, "machine running");

    let paths = Paths::from_env()?;
    let networks = networks::attach(machine, &paths)?;
    let mut switch_check = tokio::time::interval(SWITCH_CHECK);
    let mut switches_lost: Vec<String> = Vec::new();
    let mut space_check = tokio::time::interval(host_disk::CHECK_INTERVAL);
    let result = loop {
        tokio::select! {
            status = vm.vm.wait() => break Err(vm_died(machine, status)),
            event = disk_monitor.next_event() => disk_monitor.on_event(event, state),
            _ = space_check.tick(), if disk_monitor.paused() => disk_monitor.try_resume().await,
            // A network's switch that died: this machine's NIC on it stays down until it
            // restarts (QEMU cannot reconnect a stream netdev), and it says so; the next
            // member to start starts the switch again.
            _ = switch_check.tick(), if !networks.attachments.is_empty() => {
                for network in networks::switches_down(&networks, &paths) {
                    if switches_lost.contains(&network) {
                        continue;
                    }
                    let warning = format!(
                        "the switch of network {network} stopped: its link is down until the machine restarts (`rmachine restart {}`)",
                        machine.name
                    );
                    tracing::error!("{warning}");
                    state.update(|s| s.warnings.push(warning));
                    switches_lost.push(network);
                }
            }
            reason = stop_rx.recv() => {
                if disk_monitor.paused() {
                    // A paused guest can neither shut down nor be saved: its disk writes
                    // wait for space.
                    tracing::warn!("stop asked while the VM is paused for lack of host disk space: killing it (the writes it was making are lost; its filesystem's journal keeps the data disk consistent)");
                    state.update(|s| { s.state = State::Stopping; s.detail = "killing the paused VM".into(); });
                    vm.kill().await;
                    break Ok(());
                }
                stop_vm(machine, choice.backend, &carrier, &mut vm, state, reason).await;
                break Ok(());
            }
            // A helper daemon cannot be replaced under a running guest (the device's
            // vhost-user or stream connection is gone): the machine keeps running without
            // what it served, and says so until it is restarted.
            (daemon, status) = launch::daemon_exited(&mut vm.daemons) => {
                let warning = format!(
                    "{} is no longer available: its helper process exited ({status}); restart the machine (`rmachine restart {}`)",
                    daemon.serves, machine.name
                );
                tracing::error!("{warning}");
                state.update(|s| s.warnings.push(warning));
            }
        }
    };
    disk_monitor.release();
    ports_shutdown.cancel();
    let _ = ports_task.await;
    engine_task.abort();
    control_task.abort();
    result
}

/// Publishes the containers' ports on the host and mirrors them into `state.json`; tells
/// the guest of host changes under the folders running containers bind from `shares`
/// (for file watchers in containers).
fn publish_ports(
    carrier: Arc<Carrier>,
    state: SharedState,
    shares: Vec<std::path::PathBuf>,
    shutdown: tokio_util::sync::CancellationToken,
    phases: phases::Phases,
) -> tokio::task::JoinHandle<()> {
    use rmachine_hostproxy::{share_events, PortEvent, Publisher};
    let (events_tx, events_rx) = mpsc::channel::<PortEvent>(64);
    let connector: Arc<dyn rmachine_hostproxy::GuestConnector> = Arc::new(carrier.as_ref().clone());
    let mut publisher = Publisher::new(connector, events_tx);
    if !shares.is_empty() {
        let (binds_tx, binds_rx) = mpsc::unbounded_channel();
        publisher = publisher.with_bind_events(binds_tx);
        let notify_carrier = carrier.clone();
        let notifier: share_events::Notifier = Box::new(move |paths| {
            let carrier = notify_carrier.clone();
            Box::pin(async move {
                notify_changed(&carrier, paths)
                    .await
                    .map_err(|e| format!("{e:#}"))
            })
        });
        tokio::spawn(share_events::run(
            shares,
            binds_rx,
            notifier,
            shutdown.clone(),
        ));
    }
    let publisher = Arc::new(publisher);
    let mut resyncs = publisher.resyncs();
    tokio::spawn(async move {
        if resyncs.wait_for(|n| *n >= 1).await.is_ok() {
            phases.mark("published ports restored");
        }
    });
    mirror_ports(
        &publisher,
        events_rx,
        rmachine_hostproxy::HostPorts::default(),
        state,
        shutdown.clone(),
    );
    tokio::spawn(async move { publisher.run(shutdown).await })
}

/// Logs a publisher's port events and mirrors its ports into `state.json` (with the
/// address each opens on here, as `host_ports` binds it) until `shutdown`.
pub(crate) fn mirror_ports(
    publisher: &rmachine_hostproxy::Publisher,
    mut events_rx: mpsc::Receiver<rmachine_hostproxy::PortEvent>,
    host_ports: rmachine_hostproxy::HostPorts,
    state: SharedState,
    shutdown: tokio_util::sync::CancellationToken,
) {
    use rmachine_hostproxy::PortEvent;
    tokio::spawn(async move {
        while let Some(event) = events_rx.recv().await {
            let text = serde_json::to_string(&event).unwrap_or_default();
            match &event {
                PortEvent::Failed { .. } => tracing::warn!(event = %text, "port"),
                _ => tracing::info!(event = %text, "port"),
            }
        }
    });
    let mut statuses = publisher.subscribe();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                changed = statuses.changed() => if changed.is_err() { break },
                _ = shutdown.cancelled() => break,
            }
            let ports = statuses
                .borrow_and_update()
                .iter()
                .map(|p| rmachine_machine::state::PublishedPort {
                    proto: p.port.transport.proto().as_str().to_string(),
                    host_ip: host_ports.bind_ip(&p.port).to_string(),
                    host_port: p.port.host_port,
                    container: p.container.name.clone(),
                    error: p.error.clone(),
                })
                .collect();
            state.update(|s| s.ports = ports);
        }
    });
}

async fn forward_signals(stop_tx: mpsc::Sender<StopReason>) {
    rmachine_machine::sys::signal::stop_requested().await;
    tracing::info!("signal received: stopping");
    let _ = stop_tx.send(StopReason::Signal).await;
}

fn vm_died(machine: &Machine, status: String) -> anyhow::Error {
    // The console is bytes, not always UTF-8 (a serial line may start with 0xff).
    let text =
        String::from_utf8_lossy(&std::fs::read(machine.files.console_log()).unwrap_or_default())
            .into_owned();
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(20)..].join("\n");
    anyhow!("the VM exited unexpectedly ({status}); the console's last lines:\n{tail}")
}

/// The VM a start got: booted, taken over or resumed, when, and how long its agent took
/// to answer.
struct Started {
    vm: launch::RunningVm,
    carrier: Arc<Carrier>,
    /// When the VM process started (taken over: when the take-over began).
    boot: Instant,
    ping_ms: u64,
    kind: StartKind,
    /// The start's own steps before the agent answered (a resume's), and when.
    steps: Vec<(String, Instant)>,
}

/// Stops the machine's VM for `reason`: saved when `rmachine stop` asks and the backend
/// can (else, or when the save is refused, a clean shutdown); `state.last_stop` says which
/// and why.
async fn stop_vm(
    machine: &Machine,
    backend: Backend,
    carrier: &Carrier,
    vm: &mut launch::RunningVm,
    state: &SharedState,
    reason: Option<StopReason>,
) {
    let save = matches!(reason, Some(StopReason::Requested { save: true }));
    let outcome = match (reason, backend) {
        (Some(StopReason::Requested { save: false }), _) => {
            launch::SaveOutcome::NotSaved("--no-save asks for a full shutdown".into())
        }
        (Some(StopReason::Signal) | None, _) => launch::SaveOutcome::NotSaved(
            "the host agent was signalled to stop: a full shutdown".into(),
        ),
        (Some(StopReason::Requested { save: true }), Backend::Vmm) => {
            launch::SaveOutcome::NotSaved("the vmm backend cannot save a machine yet".into())
        }
        (Some(StopReason::Requested { save: true }), Backend::Qemu) => {
            state.update(|s| {
                s.state = State::Stopping;
                s.detail = "saving the VM".into();
            });
            let image = state.snapshot().image.unwrap_or_default();
            launch::save_qemu(machine, vm, carrier, &image).await
        }
    };
    let report = match outcome {
        launch::SaveOutcome::Saved(report) => {
            tracing::info!(size_bytes = ?report.size_bytes, flush_ms = ?report.flush_ms, save_ms = ?report.save_ms, "VM saved");
            report
        }
        launch::SaveOutcome::NotSaved(reason) => {
            if save {
                tracing::warn!(%reason, "not saved: shutting the guest down");
            }
            state.update(|s| {
                s.state = State::Stopping;
                s.detail = "shutting down the guest".into();
            });
            shutdown(carrier, vm).await;
            StopReport::shut_down(reason)
        }
        launch::SaveOutcome::Lost(reason) => {
            tracing::error!(%reason, "save failed after the VM stopped");
            vm.kill().await;
            StopReport::shut_down(reason)
        }
    };
    state.update(|s| s.last_stop = Some(report));
}

/// How long a VM taken over from a host agent that died may take to answer: it was
/// running, so its agent answers at once unless it is stuck.
const TAKE_OVER_TIMEOUT: Duration = Duration::from_secs(30);

/// The VM, how to reach it, when it booted and how long its agent took to answer: the VM a
/// host agent that died left running, taken over when its agent answers, else a VM booted
/// now. `None` when a stop was asked for meanwhile.
async fn take_over_or_boot(
    machine: &Machine,
    previous: &MachineState,
    choice: &BackendChoice,
    state: &SharedState,
    stop_rx: &mut mpsc::Receiver<StopReason>,
    ping_timeout: Duration,
) -> anyhow::Result<Option<Started>> {
    if let Some(mut vm) = launch::adoptable(machine, previous) {
        let carrier = Arc::new(vm.carrier.clone());
        state.update(|s| {
            vm.record(s);
            s.detail = "taking over the running VM".into();
        });
        let started = Instant::now();
        tokio::select! {
            r = wait_ping(&carrier, TAKE_OVER_TIMEOUT) => match r {
                Ok(ping_ms) => {
                    tracing::info!(ping_ms, vm = ?vm.vm.id(), helpers = vm.daemons.len(), "took over the running VM");
                    return Ok(Some(Started { vm, carrier, boot: started, ping_ms, kind: StartKind::TakeOver, steps: Vec::new() }));
                }
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "the running VM's agent does not answer: stopping it and booting again");
                    vm.kill().await;
                }
            },
            status = vm.vm.wait() => tracing::warn!(%status, "the running VM ended while being taken over: booting again"),
            _ = stop_rx.recv() => { shutdown(&carrier, &mut vm).await; return Ok(None) }
        }
    }
    // The VM `rmachine stop` saved, resumed; a saved state that cannot be is discarded,
    // and the boot says why.
    match resume_saved(machine, choice, state, stop_rx).await? {
        Resume::Resumed(started) => return Ok(Some(started)),
        Resume::StopAsked => return Ok(None),
        Resume::Cold(Some(reason)) => {
            tracing::warn!(%reason, "booting cold instead of resuming the saved state");
            if let Err(e) = saved_state::discard(&machine.files) {
                // A state that stays could be resumed after this boot wrote the data disk
                // (its check would refuse it, but it is not left to that).
                bail!(
                    "cannot remove the saved state that is not resumed ({reason}): {e}; remove {} and start again",
                    machine.files.saved_state().display()
                );
            }
            state.update(|s| {
                s.cold_boot_reason = Some(reason.clone());
                s.detail = format!("booting cold: {reason}");
            });
        }
        Resume::Cold(None) => {}
    }
    // A VM that dies before its agent answers is booted once more: under software
    // emulation a guest has been seen to reset right as init started, leaving nothing on
    // the console. A second death is the machine's error, with the console's lines.
    let mut attempt = 1;
    loop {
        let mut vm = match choice.backend {
            Backend::Qemu => launch::launch_qemu(machine, choice, state, None).await?,
            Backend::Vmm => launch::launch_vmm(machine, state).await?,
        };
        let carrier = Arc::new(vm.carrier.clone());
        let boot = Instant::now();
        state.update(|s| {
            s.detail = format!(
                "booting ({} with {})",
                choice.backend.as_str(),
                choice.accel.as_str()
            )
        });
        let died = tokio::select! {
            r = wait_ping(&carrier, ping_timeout) => {
                let ping_ms = r?;
                return Ok(Some(Started { vm, carrier, boot, ping_ms, kind: StartKind::Boot, steps: Vec::new() }));
            }
            status = vm.vm.wait() => vm_died(machine, status),
            _ = stop_rx.recv() => { vm.kill().await; return Ok(None) }
        };
        if attempt == BOOT_ATTEMPTS {
            return Err(died);
        }
        tracing::warn!(error = %format!("{died:#}"), attempt, "the VM died before its agent answered; booting it again");
        attempt += 1;
    }
}

/// What became of a machine's saved state at its start.
enum Resume {
    /// Resumed: the VM runs and its agent answered.
    Resumed(Started),
    /// A stop was asked for meanwhile (the new QEMU was killed; the state stays).
    StopAsked,
    /// Boot cold: there is no saved state, or why it was not resumed.
    Cold(Option<String>),
}

/// How long a resumed VM's agent may take to answer: it was running when saved.
const RESUME_PING_TIMEOUT: Duration = Duration::from_secs(60);

/// Resumes the machine's saved state when it has one that fits (see
/// [`rmachine_machine::saved_state`]).
async fn resume_saved(
    machine: &Machine,
    choice: &BackendChoice,
    state: &SharedState,
    stop_rx: &mut mpsc::Receiver<StopReason>,
) -> anyhow::Result<Resume> {
    let saved = match saved_state::read(&machine.files) {
        Ok(None) => return Ok(Resume::Cold(None)),
        Ok(Some(saved)) => saved,
        Err(refusal) => return Ok(Resume::Cold(Some(refusal.to_string()))),
    };
    if choice.backend != Backend::Qemu {
        let refusal = Refusal::Backend {
            saved: saved.backend.clone(),
            now: choice.backend.as_str().into(),
        };
        return Ok(Resume::Cold(Some(refusal.to_string())));
    }
    state.update(|s| {
        s.detail = format!(
            "resuming the saved VM ({} MiB)",
            saved.state_size_bytes >> 20
        )
    });
    let resume = async {
        let resumed = launch::resume_qemu(machine, choice, state, &saved).await?;
        let launch::Resumed {
            mut vm,
            started,
            loaded,
            running,
            size_bytes,
        } = resumed;
        let carrier = Arc::new(vm.carrier.clone());
        state.update(|s| {
            vm.record(s);
            s.resume_ms = Some(running.duration_since(started).as_millis() as u64);
            s.detail = "resumed: waiting for the guest agent".into();
        });
        let ping_ms = match wait_ping(&carrier, RESUME_PING_TIMEOUT).await {
            Ok(_) => started.elapsed().as_millis() as u64,
            Err(e) => {
                vm.kill().await;
                return Err(e.context("the resumed VM's agent did not answer"));
            }
        };
        let steps = vec![
            (
                format!("saved state loaded ({} MiB)", size_bytes >> 20),
                loaded,
            ),
            ("VM resumed".to_string(), running),
        ];
        anyhow::Ok(Started {
            vm,
            carrier,
            boot: started,
            ping_ms,
            kind: StartKind::Resume,
            steps,
        })
    };
    tokio::select! {
        r = resume => Ok(match r {
            Ok(started) => Resume::Resumed(started),
            Err(e) => Resume::Cold(Some(format!("{e:#}"))),
        }),
        // The new QEMU is killed as the resume is dropped.
        _ = stop_rx.recv() => Ok(Resume::StopAsked),
    }
}

async fn wait_ping(carrier: &Carrier, timeout: Duration) -> anyhow::Result<u64> {
    let started = Instant::now();
    let mut last = String::new();
    while started.elapsed() < timeout {
        match ping(carrier).await {
            Ok(()) => return Ok(started.elapsed().as_millis() as u64),
            Err(e) => last = format!("{e:#}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("the guest agent did not answer within {timeout:?} (last error: {last})")
}

async fn ping(carrier: &Carrier) -> anyhow::Result<()> {
    let mut c = ControlClient::connect(carrier).await?;
    match c.call(Request::Ping {}).await? {
        Reply::Pong => Ok(()),
        other => bail!("ping answered {other:?}"),
    }
}

/// Tells the guest agent which shared paths changed on the host.
async fn notify_changed(carrier: &Carrier, paths: Vec<String>) -> anyhow::Result<()> {
    let mut c = ControlClient::connect(carrier).await?;
    match c.call(Request::NotifyChanged { paths }).await? {
        Reply::Notified { touched, skipped } => {
            tracing::debug!(touched, skipped, "host changes replayed in the guest");
            Ok(())
        }
        other => bail!("notify_changed answered {other:?}"),
    }
}

pub(crate) async fn sync_time(carrier: &Carrier) -> anyhow::Result<i64> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .context("host clock before 1970")?;
    let mut c = ControlClient::connect(carrier).await?;
    match c
        .call(Request::SyncTime {
            unix_ns: now.as_nanos() as i64,
        })
        .await?
    {
        Reply::TimeSynced { offset_ns } => Ok(offset_ns),
        other => bail!("sync_time answered {other:?}"),
    }
}

/// The guest's uptime in seconds, if its agent tells.
async fn guest_clock(carrier: &Carrier) -> Option<f64> {
    let mut c = ControlClient::connect(carrier).await.ok()?;
    match c.call(Request::Info {}).await {
        Ok(Reply::Info(info)) => Some(info.uptime_s),
        _ => None,
    }
}

/// Waits until the guest agent says dockerd answers; its last `info` reply.
async fn wait_engine(carrier: &Carrier, timeout: Duration) -> anyhow::Result<GuestInfo> {
    let started = Instant::now();
    let mut last = None;
    while started.elapsed() < timeout {
        if let Ok(mut c) = ControlClient::connect(carrier).await {
            if let Ok(Reply::Info(info)) = c.call(Request::Info {}).await {
                match info.dockerd.state {
                    ServiceState::Running => return Ok(*info),
                    ServiceState::Failed => bail!(
                        "the engine could not start: {}",
                        info.dockerd
                            .last_error
                            .clone()
                            .unwrap_or_else(|| "no reason given".into())
                    ),
                    _ => last = Some(info),
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    bail!("the engine did not become ready within {timeout:?}; last agent info: {last:?}")
}

async fn shutdown(carrier: &Carrier, vm: &mut launch::RunningVm) {
    let asked = async {
        let mut c = ControlClient::connect(carrier).await?;
        c.call(Request::Shutdown { reboot: false }).await?;
        anyhow::Ok(())
    };
    if let Err(e) = asked.await {
        tracing::warn!(error = %format!("{e:#}"), "guest did not take the shutdown request; killing the VM");
        vm.kill().await;
        return;
    }
    match tokio::time::timeout(SHUTDOWN_TIMEOUT, vm.vm.wait()).await {
        Ok(status) => tracing::info!(status = ?status, "VM exited"),
        Err(_) => {
            tracing::warn!("VM still running {SHUTDOWN_TIMEOUT:?} after shutdown; killing it");
            vm.kill().await;
        }
    }
}
