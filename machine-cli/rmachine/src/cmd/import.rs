//! `rmachine import FILE [NAME]`: recreates an exported ssh machine here (paths made
//! local), checking its pinned host key on the first connection.

use crate::progress::StepProgress;

#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// A file written by `rmachine export`.
    pub file: std::path::PathBuf,
    /// The machine's name here (default: its exported name).
    pub name: Option<String>,
}

pub fn run(args: ImportArgs) -> anyhow::Result<()> {
    use anyhow::Context;
    use rmachine_machine::ssh::{bundle::Bundle, Auth};
    let text = std::fs::read_to_string(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    let bundle = Bundle::parse(&args.file, &text)?;
    let passphrase = super::create_ssh::ask_passphrase(&Auth {
        key: bundle.settings_here().key,
        passphrase: None,
    })?;
    let lc = super::lifecycle()?.with_ssh_passphrase(passphrase);
    let name = args.name.as_deref().unwrap_or(&bundle.name).to_string();
    let progress = std::sync::Mutex::new(StepProgress::new());
    let lock = || {
        progress
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    };
    lock().step(1, 1, &format!("importing machine {name}"));
    let machine = lc.import(&bundle, args.name.as_deref(), &mut |line| {
        lock().detail(line)
    })?;
    lock().done(&format!(
        "imported machine {} ({}; docker context {})",
        machine.name,
        machine
            .spec
            .ssh
            .as_ref()
            .map(|s| s.target().to_string())
            .unwrap_or_default(),
        rmachine_machine::docker_context::context_name(&machine.name)
    ));
    Ok(())
}
