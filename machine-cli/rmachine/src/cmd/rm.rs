//! `rmachine rm [-f] NAME...`: removes machines, their data disks and docker contexts.

#[derive(Debug, clap::Args)]
pub struct RmArgs {
    /// Machine names.
    #[arg(required = true)]
    pub names: Vec<String>,
    /// Stop a running machine first (killing it).
    #[arg(long, short)]
    pub force: bool,
}

pub fn run(args: RmArgs) -> anyhow::Result<()> {
    let lc = super::lifecycle()?;
    for name in &args.names {
        lc.remove(name, args.force)?;
        println!("removed machine {name}");
    }
    Ok(())
}
