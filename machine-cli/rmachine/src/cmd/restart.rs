//! `rmachine restart [NAME]`.

use super::DEFAULT_MACHINE;
use crate::progress::StepProgress;

#[derive(Debug, clap::Args)]
pub struct RestartArgs {
    /// Machine name.
    #[arg(default_value = DEFAULT_MACHINE)]
    pub name: String,
}

pub fn run(args: RestartArgs) -> anyhow::Result<()> {
    let lc = super::create_ssh::with_passphrase(super::lifecycle()?, &args.name)?;
    let progress = StepProgress::new();
    progress.step(1, 1, &format!("restarting machine {}", args.name));
    let machine = lc.restart(&args.name, &mut |detail| progress.detail(detail))?;
    progress.done(&super::start::started_message(&machine));
    super::start::use_context(&lc, &args.name, false)
}
