//! rmachine-agent: PID 1 of the rmachine guest.
//!
//! As PID 1 (`init=/sbin/rmachine-agent`) it mounts the kernel filesystems, reads the
//! config disk, sets the clock and hostname, mounts the data disk and configures the
//! network, starts containerd and dockerd, serves the host's guest services (control,
//! dial, exec, engine) over vsock and TCP, and shuts the machine down when asked.
//! Command-line arguments are ignored in that role (the kernel passes stray boot
//! parameters).
//!
//! Run as any other process, it only serves: `rmachine-agent serve --tcp ADDR:PORT
//! --token T --docker-sock PATH` serves the services on PORT, PORT+1, PORT+2 and PORT+3
//! (in the order of `Service::ALL`) with no mounts and no engine, for development and
//! tests.
#![forbid(unsafe_code)]

mod clock;
mod config;
mod control;
mod data_disk;
mod dhcp;
mod dial;
mod engine;
mod exec;
mod hosts;
mod init;
mod logging;
mod mounts;
mod network;
mod notify;
mod proxy;
mod rate_limit;
mod reaper;
mod server;
mod shares;
mod shutdown;
mod status;
mod supervisor;
mod sysinfo;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};
use rmachine_protocol::Service;
use tokio::sync::mpsc;
use tracing::info;

use crate::clock::ClockControl;
use crate::logging::LogSink;
use crate::reaper::Reaper;
use crate::server::Context;
use crate::status::Status;

#[derive(Parser)]
#[command(
    name = "rmachine-agent",
    version,
    about = "The rmachine guest agent (PID 1 of the guest)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the guest services without booting anything (development, tests).
    Serve(ServeArgs),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Address and first port: control is served on PORT, dial on PORT+1, exec on
    /// PORT+2, engine on PORT+3.
    #[arg(long, value_name = "ADDR:PORT")]
    tcp: SocketAddr,
    /// Token the host must present on every connection.
    #[arg(long, env = "RMACHINE_TOKEN")]
    token: String,
    /// The engine socket the engine service splices to.
    #[arg(long, value_name = "PATH", default_value = engine::DOCKER_SOCK)]
    docker_sock: PathBuf,
    /// Also listen on vsock (the services' own ports, any CID).
    #[arg(long)]
    vsock: bool,
}

fn main() -> anyhow::Result<()> {
    if nix::unistd::getpid().as_raw() == 1 {
        init::run();
    }
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve(args),
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    if args.token.is_empty() {
        bail!("--token must not be empty");
    }
    let log = LogSink::new(true, false);
    logging::init(&log);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let (shutdown_tx, mut shutdown_rx) = mpsc::channel(4);
        let hostname = nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_else(|_| config::DEFAULT_HOSTNAME.into());
        let status = Arc::new(Status::new(&hostname));
        let unmanaged = format!(
            "not managed in serve mode; expected at {}",
            args.docker_sock.display()
        );
        for info in [&status.containerd, &status.dockerd] {
            info.send_modify(|i| i.last_error = Some(unmanaged.clone()));
        }
        let ctx = Arc::new(Context::new(
            Some(args.token.clone()),
            args.docker_sock.clone(),
            status,
            ClockControl::Observe,
            shutdown_tx,
            Reaper::start(),
        ));
        for (offset, service) in (0u16..).zip(Service::ALL) {
            let port = args
                .tcp
                .port()
                .checked_add(offset)
                .context("port range runs past 65535")?;
            let addr = SocketAddr::new(args.tcp.ip(), port);
            let (bound, _) = server::listen_tcp(addr, service, ctx.clone())
                .await
                .with_context(|| format!("cannot serve {service}"))?;
            info!(%service, addr = %bound, "listening on tcp");
            if args.vsock {
                server::listen_vsock(service, ctx.clone())
                    .with_context(|| format!("cannot serve {service} on vsock"))?;
                info!(%service, port = service.port(), "listening on vsock");
            }
        }
        tokio::select! {
            request = shutdown_rx.recv() => {
                if let Some(request) = request {
                    info!("{}; exiting (not PID 1: nothing to power off)", request.reason);
                }
            }
            result = tokio::signal::ctrl_c() => {
                result.context("cannot wait for Ctrl-C")?;
                info!("interrupted; exiting");
            }
        }
        anyhow::Ok(())
    })
}
