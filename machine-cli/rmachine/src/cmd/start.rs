//! `rmachine start [NAME]`: creates the machine when it does not exist (`default` when
//! no name is given), boots it, and makes its docker context current.

use rmachine_machine::docker_context;
use rmachine_machine::lifecycle::Lifecycle;
use rmachine_machine::state::{StartKind, State};

use super::create::SettingsArgs;
use super::DEFAULT_MACHINE;
use crate::progress::StepProgress;

#[derive(Debug, clap::Args)]
pub struct StartArgs {
    /// Machine name.
    #[arg(default_value = DEFAULT_MACHINE)]
    pub name: String,
    /// Keep the current docker context instead of switching to this machine's.
    #[arg(long)]
    pub no_use: bool,
    /// Settings for a machine that does not exist yet.
    #[command(flatten)]
    pub settings: SettingsArgs,
}

pub fn run(args: StartArgs) -> anyhow::Result<()> {
    let lc = super::create_ssh::with_passphrase(super::lifecycle()?, &args.name)?;
    let was_running = lc
        .store()
        .load(&args.name)
        .is_ok_and(|m| m.state.state == State::Running);
    let progress = StepProgress::new();
    progress.step(1, 1, &format!("starting machine {}", args.name));
    let (machine, _) =
        lc.start_or_create(&args.name, &args.settings.settings(), &mut |detail| {
            progress.detail(detail)
        })?;
    if was_running {
        progress.done(&format!("machine {} is already running", args.name));
    } else {
        progress.done(&started_message(&machine));
    }
    use_context(&lc, &args.name, !args.no_use)
}

/// What a finished start says.
pub fn started_message(machine: &rmachine_machine::store::Machine) -> String {
    if let Some(ssh) = &machine.spec.ssh {
        return format!(
            "machine {} is running: its local docker.sock and ports reach the engine on {} over ssh (connected in {:.1} s)",
            machine.name,
            ssh.target(),
            machine.state.engine_ready_ms.unwrap_or(0) as f64 / 1000.0
        );
    }
    let s = &machine.state;
    let backend = s.backend.as_deref().unwrap_or("?");
    let ready_s = s.engine_ready_ms.unwrap_or(0) as f64 / 1000.0;
    if s.start_kind == Some(StartKind::Resume) {
        return format!(
            "machine {} is running, resumed from its saved state ({backend}; VM running again in {:.1} s, engine answering {ready_s:.1} s after the start)",
            machine.name,
            s.resume_ms.unwrap_or(0) as f64 / 1000.0
        );
    }
    let cold = match &s.cold_boot_reason {
        Some(reason) => format!("; booted cold, the saved state was not resumed: {reason}"),
        None => String::new(),
    };
    format!(
        "machine {} is running ({backend}; engine ready {ready_s:.1} s after boot{cold})",
        machine.name,
    )
}

/// Makes the machine's context current (`switch`), or says how to use it.
pub fn use_context(lc: &Lifecycle, name: &str, switch: bool) -> anyhow::Result<()> {
    let context = docker_context::context_name(name);
    if switch {
        lc.use_machine(name)?;
        println!("docker context {context} is now current: `docker run` uses this machine");
    } else {
        println!(
            "docker context {context}: `docker --context {context} ...` or `rmachine use {name}`"
        );
    }
    Ok(())
}
