//! `rmachine hostagent NAME` (hidden): the per-machine host agent process, started by
//! `rmachine start`.

#[derive(Debug, clap::Args)]
pub struct HostAgentArgs {
    /// Machine name.
    pub name: String,
}

pub fn run(args: HostAgentArgs) -> anyhow::Result<()> {
    rmachine_hostagent::run(&args.name)
}
