//! `rmachine rm [-f] NAME...`: removes machines, their data disks and docker contexts.

#[derive(Debug, clap::Args)]
pub struct RmArgs {
    /// Machine names.
    #[arg(required = true)]
    pub names: Vec<String>,
    /// Stop a running machine first (killing it).
    #[arg(long, short)]
    pub force: bool,
    /// For an ssh machine: also undo what rmachine changed on the host (its TLS setup and
    /// the packages it installed). Without it the remote engine is left alone.
    #[arg(long)]
    pub purge_remote: bool,
}

pub fn run(args: RmArgs) -> anyhow::Result<()> {
    let mut lc = super::lifecycle()?;
    for name in &args.names {
        if args.purge_remote {
            lc = super::create_ssh::with_passphrase(lc, name)?;
        }
        lc.remove_with(name, args.force, args.purge_remote, &mut |line| {
            eprintln!("      {line}")
        })?;
        println!("removed machine {name}");
    }
    Ok(())
}
