//! `rmachine network-switch NAME` (hidden): the Ethernet switch of a network between
//! machines, started by the host agent of the network's first member to start. It ends
//! by itself once no machine has been connected for a while.

use std::time::Duration;

use anyhow::Context;
use rmachine_hostproxy::switch::{self, SwitchOptions};
use rmachine_machine::network::Networks;
use rmachine_machine::paths::Paths;
use tokio_util::sync::CancellationToken;

/// How long the switch waits for its first (or next) machine before it ends.
const IDLE_EXIT: Duration = Duration::from_secs(30);

#[derive(Debug, clap::Args)]
pub struct NetworkSwitchArgs {
    /// Network name.
    pub name: String,
}

pub fn run(args: NetworkSwitchArgs) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RMACHINE_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_ansi(false)
        .init();
    let networks = Networks::new(&Paths::from_env()?);
    networks.load(&args.name)?;
    let socket = networks.socket(&args.name);
    // Who runs the switch, for the host agents that watch it.
    let pid_file = networks.pid_file(&args.name);
    let me = rmachine_machine::sys::process::ProcessId::current();
    rmachine_machine::store::write_atomic(&pid_file, &serde_json::to_vec(&me)?)
        .with_context(|| format!("cannot write {}", pid_file.display()))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let result = rt.block_on(async {
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            rmachine_machine::sys::signal::stop_requested().await;
            stop.cancel();
        });
        let options = SwitchOptions {
            idle_exit: Some(IDLE_EXIT),
            ..SwitchOptions::default()
        };
        switch::run(&socket, options, shutdown)
            .await
            .with_context(|| format!("the switch of network {} failed", args.name))
    });
    let _ = std::fs::remove_file(&pid_file);
    result?;
    Ok(())
}
