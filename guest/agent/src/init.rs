//! The boot sequence of the guest, run when the agent is PID 1.
//!
//! Every step logs what it did and how long it took; a step that fails logs why and the
//! boot goes on where it can. Nothing here may panic or return: when PID 1 exits, the
//! kernel panics.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::resource::{setrlimit, Resource};
use rmachine_protocol::Service;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tracing::{error, info, warn};

use crate::clock::{self, ClockControl};
use crate::config::{self, BootConfig};
use crate::data_disk;
use crate::engine::{self, Engine};
use crate::hosts::{self, HostsFile};
use crate::logging::{self, error_chain, LogSink};
use crate::mounts;
use crate::network;
use crate::reaper::Reaper;
use crate::server::{self, Context};
use crate::shares;
use crate::shutdown::{self, ShutdownRequest};
use crate::status::Status;
use crate::sysinfo;

/// The agent's own log file, on the data disk.
const LOG_FILE: &str = "/var/log/rmachine-agent.log";

/// Open-file limits handed to every process: the kernel's default hard limit (4096) is
/// too low for dockerd and containers; this is what systemd gives services.
const NOFILE_SOFT: u64 = 1024;
const NOFILE_HARD: u64 = 524_288;

/// Boots the guest, serves until asked to stop, shuts down and resets the machine.
pub fn run() -> ! {
    let started = Instant::now();
    let started_boot_ms = sysinfo::boot_clock_ms();
    let log = LogSink::new(true, true);
    logging::init(&log);
    info!(
        version = rmachine_protocol::AGENT_VERSION,
        "rmachine-agent starting as PID 1"
    );
    // args_os: the kernel passes whatever the boot line holds, UTF-8 or not.
    let args: Vec<String> = std::env::args_os()
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    if !args.is_empty() {
        info!(?args, "ignoring arguments from the kernel command line");
    }
    mounts::mount_early();
    // Ctrl-Alt-Del becomes SIGINT to PID 1 (a clean shutdown) instead of a hard reset.
    if let Err(e) = nix::sys::reboot::set_cad_enabled(false) {
        warn!(error = %e, "cannot route Ctrl-Alt-Del to the agent");
    }
    if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, NOFILE_SOFT, NOFILE_HARD) {
        warn!(error = %e, "cannot raise the open file limit");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(16)
        .thread_name("agent")
        .enable_all()
        .build();
    match runtime {
        Ok(runtime) => runtime.block_on(async {
            let request = boot_and_serve(&log, started, started_boot_ms).await;
            info!(
                "boot-to-shutdown time {:.1} s",
                started.elapsed().as_secs_f64()
            );
            request
        }),
        Err(e) => {
            error!(error = %e, "cannot start the async runtime; nothing can be served");
            // Keep PID 1 alive so the console shows why.
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
    };
    shutdown::reset()
}

/// Log the time a step took.
fn step_done(step: &str, started: Instant) {
    info!(elapsed_ms = started.elapsed().as_millis() as u64, "{step}");
}

async fn boot_and_serve(log: &LogSink, boot_started: Instant, started_boot_ms: u64) {
    let reaper = Reaper::start();
    let (shutdown_tx, mut shutdown_rx) = mpsc::channel::<ShutdownRequest>(4);
    forward_signals(shutdown_tx.clone());

    let t = Instant::now();
    let config = config::load();
    step_done("config read", t);

    set_clock_and_hostname(&config);
    let hosts_file = install_hosts(&config);

    let status = Arc::new(Status::new(&config.hostname));
    status.phase_at("agent started", started_boot_ms);
    status.phase("config read");
    let ctx = Arc::new(
        Context::new(
            config.token.clone(),
            PathBuf::from(engine::DOCKER_SOCK),
            status.clone(),
            ClockControl::System,
            shutdown_tx,
            reaper.clone(),
        )
        .with_shares(
            config
                .mounts
                .iter()
                .map(|m| PathBuf::from(&m.guest_path))
                .collect(),
        )
        .with_hosts(hosts_file),
    );
    let t = Instant::now();
    start_services(&ctx).await;
    step_done("guest services listening", t);
    status.phase("guest services listening");

    // Network and data disk in parallel; the engine waits for both.
    let t = Instant::now();
    let network = {
        let reaper = reaper.clone();
        let hostname = config.hostname.clone();
        let (primary_mac, networks) = (config.primary_mac, config.networks.clone());
        let status = status.clone();
        tokio::spawn(async move {
            let ip = network::setup(&reaper, &hostname, primary_mac, &networks).await;
            status.phase("network up");
            ip
        })
    };
    let data = async {
        let done = prepare_data_disk(&reaper, &config, log).await;
        if done.is_ok() {
            status.phase("data disk mounted");
        }
        done
    };
    let shares = {
        let mounts = config.mounts.clone();
        let status = status.clone();
        tokio::task::spawn_blocking(move || {
            shares::mount_all(&mounts);
            if !mounts.is_empty() {
                status.phase("shared folders mounted");
            }
        })
    };
    let (network, data, shares) = tokio::join!(network, data, shares);
    if let Err(e) = shares {
        warn!(error = %e, "shared folder task failed");
    }
    match network {
        Ok(ip) => status.set_ip(ip.map(|ip| ip.to_string())),
        Err(e) => warn!(error = %e, "network setup task failed"),
    }
    step_done("network and data disk done", t);

    let engine = match data {
        Ok(()) => {
            status.set_data_disk_mounted(true);
            let daemon_json = engine::write_daemon_json(
                config.engine.as_ref(),
                std::path::Path::new(engine::DAEMON_JSON),
            );
            Some(Engine::start(
                &reaper,
                config.host_addr.as_deref(),
                daemon_json.as_deref(),
                status.containerd.clone(),
                status.dockerd.clone(),
            ))
        }
        Err(reason) => {
            error!("not starting the engine: {reason}");
            engine::mark_failed([&status.containerd, &status.dockerd], &reason);
            None
        }
    };
    info!(
        elapsed_ms = boot_started.elapsed().as_millis() as u64,
        "boot done; serving"
    );
    if engine.is_some() {
        for (name, service) in [
            ("containerd ready", &status.containerd),
            ("dockerd ready", &status.dockerd),
        ] {
            let mut watch = service.subscribe();
            let (status, t) = (status.clone(), boot_started);
            tokio::spawn(async move {
                let running = |i: &rmachine_protocol::control::ProcessInfo| {
                    i.state == rmachine_protocol::control::ServiceState::Running
                };
                if watch.wait_for(running).await.is_ok() {
                    status.phase(name);
                    info!(elapsed_ms = t.elapsed().as_millis() as u64, "{name}");
                }
            });
        }
    }

    let request = shutdown_rx.recv().await.unwrap_or_else(|| ShutdownRequest {
        reboot: false,
        reason: "every shutdown source is gone".into(),
    });
    shutdown::run(&request, engine, log).await;
}

fn set_clock_and_hostname(config: &BootConfig) {
    match config.host_time_unix_ns {
        Some(host_ns) => match clock::set_realtime(host_ns) {
            Ok(()) => info!("clock set from the config disk"),
            Err(e) => warn!(error = %error_chain(&e), "cannot set the clock"),
        },
        None => info!("no host time on the config disk; clock left as the kernel set it"),
    }
    match nix::unistd::sethostname(&config.hostname) {
        Ok(()) => info!(hostname = %config.hostname, "hostname set"),
        Err(e) => warn!(hostname = %config.hostname, error = %e, "cannot set the hostname"),
    }
}

/// Writes /etc/hosts (this machine and the config disk's peers) and puts it in place;
/// `set_hosts` rewrites it later. A failure is logged: names are a convenience.
fn install_hosts(config: &BootConfig) -> Arc<HostsFile> {
    let own = config.networks.iter().map(|n| n.nic.address).collect();
    let file = Arc::new(HostsFile::new(
        PathBuf::from(hosts::HOSTS_FILE),
        &config.hostname,
        own,
    ));
    if let Err(e) = hosts::install(&file, &config.hosts) {
        warn!(error = %error_chain(&e), "cannot write {}", hosts::ETC_HOSTS);
    }
    file
}

/// Listens on vsock when the guest has it, and on TCP when there is a token.
async fn start_services(ctx: &Arc<Context>) {
    let vsock = Path::new("/dev/vsock").exists();
    if !vsock {
        warn!("no /dev/vsock: not listening on vsock");
    }
    if ctx.token.is_none() {
        info!("no token: not listening on TCP");
    }
    for service in Service::ALL {
        if vsock {
            match server::listen_vsock(service, ctx.clone()) {
                Ok(_) => info!(%service, port = service.port(), "listening on vsock"),
                Err(e) => error!(%service, error = %error_chain(&e), "cannot listen on vsock"),
            }
        }
        if ctx.token.is_some() {
            let addr = (std::net::Ipv4Addr::UNSPECIFIED, service.port()).into();
            match server::listen_tcp(addr, service, ctx.clone()).await {
                Ok((addr, _)) => info!(%service, %addr, "listening on tcp"),
                Err(e) => error!(%service, error = %error_chain(&e), "cannot listen on tcp"),
            }
        }
    }
}

/// Mounts the data disk and starts logging to it. `Err` carries the reason the engine
/// cannot start.
async fn prepare_data_disk(
    reaper: &Reaper,
    config: &BootConfig,
    log: &LogSink,
) -> Result<(), String> {
    let mut reserved = Vec::new();
    if let Some(device) = &config.config_device {
        reserved.push((device.display().to_string(), "config disk"));
    }
    if let Some(root) = std::fs::read_to_string("/proc/cmdline")
        .ok()
        .as_deref()
        .and_then(data_disk::root_device)
    {
        reserved.push((root.to_string(), "root disk"));
    }
    match data_disk::prepare(reaper, &config.data_disk, &reserved).await {
        Ok(()) => {
            match log.attach_file(Path::new(LOG_FILE)) {
                Ok(()) => info!(path = LOG_FILE, "logging to file"),
                Err(e) => warn!(error = %error_chain(&e), "cannot log to a file"),
            }
            Ok(())
        }
        Err(e) => {
            let reason = error_chain(&e);
            error!("data disk: {reason}");
            Err(reason)
        }
    }
}

/// Turns SIGTERM and SIGINT (Ctrl-Alt-Del) into shutdown requests.
fn forward_signals(shutdown: mpsc::Sender<ShutdownRequest>) {
    for (kind, name) in [
        (SignalKind::terminate(), "SIGTERM"),
        (SignalKind::interrupt(), "SIGINT"),
    ] {
        let mut stream = match signal(kind) {
            Ok(stream) => stream,
            Err(e) => {
                warn!(error = %e, "cannot handle {name}");
                continue;
            }
        };
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            while stream.recv().await.is_some() {
                info!("{name} received");
                let request = ShutdownRequest {
                    reboot: false,
                    reason: format!("{name} received"),
                };
                if shutdown.try_send(request).is_err() {
                    warn!("shutdown already under way");
                }
            }
        });
    }
}
