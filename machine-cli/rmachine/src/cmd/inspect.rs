//! `rmachine inspect [NAME]`: everything about a machine as JSON, including which
//! backend runs (or would run) it and why.

use super::DEFAULT_MACHINE;

#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// Machine name.
    #[arg(default_value = DEFAULT_MACHINE)]
    pub name: String,
}

pub fn run(args: InspectArgs) -> anyhow::Result<()> {
    let out = super::lifecycle()?.inspect(&args.name)?;
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}
