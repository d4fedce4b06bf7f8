//! `rmachine use NAME`: makes the machine's docker context the current one.

#[derive(Debug, clap::Args)]
pub struct UseArgs {
    /// Machine name.
    pub name: String,
}

pub fn run(args: UseArgs) -> anyhow::Result<()> {
    let lc = super::lifecycle()?;
    lc.use_machine(&args.name)?;
    println!(
        "docker context {} is now current",
        rmachine_machine::docker_context::context_name(&args.name)
    );
    Ok(())
}
