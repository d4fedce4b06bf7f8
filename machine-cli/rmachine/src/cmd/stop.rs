//! `rmachine stop [NAME]`: a clean shutdown (engine stopped, data synced), or `--force`.

use rmachine_machine::state::State;

use super::DEFAULT_MACHINE;

#[derive(Debug, clap::Args)]
pub struct StopArgs {
    /// Machine name.
    #[arg(default_value = DEFAULT_MACHINE)]
    pub name: String,
    /// Kill the VM and every process of the machine at once instead of shutting it down.
    #[arg(long, short)]
    pub force: bool,
}

pub fn run(args: StopArgs) -> anyhow::Result<()> {
    let lc = super::lifecycle()?;
    if lc.store().load(&args.name)?.state.state == State::Stopped {
        println!("machine {} is not running", args.name);
        return Ok(());
    }
    if !args.force {
        eprintln!("stopping machine {}", args.name);
    }
    lc.stop(&args.name, args.force)?;
    println!("machine {} stopped", args.name);
    Ok(())
}
