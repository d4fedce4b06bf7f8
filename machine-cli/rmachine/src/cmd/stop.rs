//! `rmachine stop [NAME]`: a clean shutdown (engine stopped, data synced).

use rmachine_machine::state::State;

use super::DEFAULT_MACHINE;

#[derive(Debug, clap::Args)]
pub struct StopArgs {
    /// Machine name.
    #[arg(default_value = DEFAULT_MACHINE)]
    pub name: String,
    /// Kill the VM at once instead of shutting it down.
    #[arg(long, short)]
    pub force: bool,
}

pub fn run(args: StopArgs) -> anyhow::Result<()> {
    let machine = super::load(&args.name)?;
    if machine.state.state == State::Stopped {
        println!("machine {} is not running", args.name);
        return Ok(());
    }
    let driver = rmachine_machine::driver::for_machine(&machine);
    if args.force {
        driver.kill(&machine)?;
    } else {
        eprintln!("stopping machine {}", args.name);
        driver.stop(&machine)?;
    }
    println!("machine {} stopped", args.name);
    Ok(())
}
