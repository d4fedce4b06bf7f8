//! `rmachine network-switch NAME` where there are no unix sockets.

#[derive(Debug, clap::Args)]
pub struct NetworkSwitchArgs {
    /// Network name.
    pub name: String,
}

pub fn run(args: NetworkSwitchArgs) -> anyhow::Result<()> {
    anyhow::bail!(
        "network {}: networks between machines need unix sockets (Linux and macOS hosts)",
        args.name
    )
}
