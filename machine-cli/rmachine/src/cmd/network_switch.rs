//! `rmachine network-switch NAME` (hidden): the Ethernet switch of a network between
//! machines (`rmachine_hostagent::run_network_switch`), started by the host agent of the
//! network's first member to start.

#[derive(Debug, clap::Args)]
pub struct NetworkSwitchArgs {
    /// Network name.
    pub name: String,
}

pub fn run(args: NetworkSwitchArgs) -> anyhow::Result<()> {
    rmachine_hostagent::run_network_switch(&args.name)
}
