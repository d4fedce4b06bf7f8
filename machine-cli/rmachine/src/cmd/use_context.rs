//! `rmachine use NAME`: makes the machine's docker context the current one.

use rmachine_machine::docker_context;

#[derive(Debug, clap::Args)]
pub struct UseArgs {
    /// Machine name.
    pub name: String,
}

pub fn run(args: UseArgs) -> anyhow::Result<()> {
    let m = super::load(&args.name)?;
    super::create::write_context(&m)?;
    let context = docker_context::context_name(&m.name);
    docker_context::set_current(&docker_context::docker_config_dir()?, Some(&context))?;
    println!("docker context {context} is now current");
    Ok(())
}
