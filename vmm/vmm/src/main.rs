//! `rmachine-vmm --config FILE`: boots the VM the JSON document describes and runs it until
//! the guest resets or shuts down (exit status 0) or something fails (exit status 1).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use tracing_subscriber::EnvFilter;

use vmm::builder::Vmm;
use vmm::config::VmConfig;
use vmm::preopen::Preopened;
use vmm::seccomp::{Filters, SeccompSettings, ThreadKind};
use vmm::snapshot::{LoadedSnapshot, RESTORE_REFUSED_EXIT};

/// rmachine's KVM microVM monitor.
#[derive(Debug, Parser)]
#[command(name = "rmachine-vmm", version, about, long_about = None)]
struct Cli {
    /// The VM's JSON configuration (see the `vmm::config` documentation).
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// Start from the snapshot in DIR (written by `PUT /vm/snapshot`) instead of booting.
    /// The configuration must describe the same VM; a snapshot that is refused (missing,
    /// truncated, corrupt, another format version, other settings) ends the VMM with exit
    /// status 3 before anything ran, so the caller can boot cold instead.
    #[arg(long, value_name = "DIR")]
    restore: Option<PathBuf>,
    /// Log file (default: stderr). The level comes from RUST_LOG (default: info).
    #[arg(long, value_name = "FILE")]
    log_file: Option<PathBuf>,
    /// Run without the per-thread seccomp filters (debugging only; logged as a warning).
    #[arg(long)]
    no_seccomp: bool,
    /// Let system calls outside the seccomp allow-lists through, logged by the kernel (audit
    /// log), instead of killing the VMM: for finding what a list lacks.
    #[arg(long)]
    seccomp_log: bool,
    /// Remove SYSCALL from the seccomp allow-list of the THREAD kind (main, vcpu, devices, api,
    /// serial-stdin, jail): the VMM is killed with SIGSYS when that thread makes it. For tests
    /// and for checking a filter; repeatable.
    #[arg(long, value_name = "THREAD:SYSCALL")]
    seccomp_deny: Vec<String>,
}

fn init_logging(log_file: Option<&PathBuf>) -> anyhow::Result<()> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    match log_file {
        Some(path) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("cannot open log file {}", path.display()))?;
            builder
                .with_ansi(false)
                .with_writer(std::sync::Mutex::new(file))
                .init();
        }
        None => builder.with_writer(std::io::stderr).init(),
    }
    Ok(())
}

/// A failure with its own exit status.
#[derive(Debug)]
struct ExitWith(u8, anyhow::Error);

fn run(cli: Cli) -> Result<i32, ExitWith> {
    run_inner(cli).map_err(|e| match e.downcast::<ExitWith>() {
        Ok(exit) => exit,
        Err(e) => ExitWith(1, e),
    })
}

impl std::fmt::Display for ExitWith {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#}", self.1)
    }
}

impl std::error::Error for ExitWith {}

fn run_inner(cli: Cli) -> anyhow::Result<i32> {
    let config = VmConfig::from_file(&cli.config)?.validate()?;
    // Read and checked before anything is created (and before a jail hides the folder).
    let restore = match &cli.restore {
        Some(dir) => Some(LoadedSnapshot::open(dir, &config).map_err(|e| {
            ExitWith(
                RESTORE_REFUSED_EXIT,
                anyhow::Error::new(e).context(format!(
                    "snapshot {} refused; boot without --restore instead",
                    dir.display()
                )),
            )
        })?),
        None => None,
    };
    if cli.no_seccomp {
        tracing::warn!("--no-seccomp: the vmm's threads run without seccomp filters");
    } else if cli.seccomp_log {
        tracing::warn!("--seccomp-log: calls outside the seccomp allow-lists are only logged");
    }
    let filters = Filters::build(&SeccompSettings {
        enabled: !cli.no_seccomp,
        log_only: cli.seccomp_log,
        deny: cli.seccomp_deny.clone(),
    })?;
    let mut preopened = Preopened::open(&config)?;
    if config.config.jail.is_some() {
        // Returns in the jailed child; the parent waits and exits as it does.
        vmm::jail::enter(&config, &filters)?;
    }
    let api = preopened.api.take();
    let vmm =
        Vmm::start(config, &mut preopened, &filters, restore).context("cannot start the vm")?;
    if let Some(listener) = api {
        vmm::api::serve(listener, vmm.handle(), &filters).context("cannot serve the api")?;
    }
    filters.apply(ThreadKind::Main)?;
    let reason = vmm.wait();
    match &reason {
        vmm::vcpu::VmmExit::GuestReset => {
            tracing::info!("guest reset the machine; vmm exiting with status 0")
        }
        vmm::vcpu::VmmExit::GuestShutdown => {
            tracing::info!("guest shut down; vmm exiting with status 0")
        }
        vmm::vcpu::VmmExit::Poweroff => {
            tracing::info!("powered off through the api; vmm exiting with status 0")
        }
        vmm::vcpu::VmmExit::Error(e) => {
            tracing::error!(error = %e, "vm failed; vmm exiting with status 1")
        }
    }
    Ok(reason.exit_code())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = init_logging(cli.log_file.as_ref()) {
        eprintln!("rmachine-vmm: {e:#}");
        return ExitCode::FAILURE;
    }
    match run(cli) {
        // Exit at once: vCPU and device threads are not joined.
        Ok(code) => std::process::exit(code),
        Err(ExitWith(code, e)) => {
            tracing::error!("{e:#}");
            eprintln!("rmachine-vmm: {e:#}");
            ExitCode::from(code)
        }
    }
}
