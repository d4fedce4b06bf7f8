//! `rmachine restart [NAME]`.

use rmachine_machine::state::State;

use super::DEFAULT_MACHINE;

#[derive(Debug, clap::Args)]
pub struct RestartArgs {
    /// Machine name.
    #[arg(default_value = DEFAULT_MACHINE)]
    pub name: String,
}

pub fn run(args: RestartArgs) -> anyhow::Result<()> {
    let machine = super::load(&args.name)?;
    if machine.state.state != State::Stopped {
        rmachine_machine::driver::for_machine(&machine).stop(&machine)?;
    }
    super::start::start(&args.name, false)
}
