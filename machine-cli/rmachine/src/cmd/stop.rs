//! `rmachine stop [NAME]`: saves the machine where its driver can (the next start resumes
//! it, containers still running), else shuts it down cleanly (engine stopped, data
//! synced); `--no-save` always shuts down, `--force` kills at once.

use rmachine_machine::lifecycle::StopMode;
use rmachine_machine::state::State;

use super::DEFAULT_MACHINE;

#[derive(Debug, clap::Args)]
pub struct StopArgs {
    /// Machine name.
    #[arg(default_value = DEFAULT_MACHINE)]
    pub name: String,
    /// Shut the guest down instead of saving it, and drop any saved state: the next
    /// start boots cold. Without it the machine is saved where its driver can (the qemu
    /// driver, machines without shared folders) and the next start resumes it.
    #[arg(long, conflicts_with = "force")]
    pub no_save: bool,
    /// Kill the VM and every process of the machine at once instead of stopping it
    /// (never saved).
    #[arg(long, short)]
    pub force: bool,
}

pub fn run(args: StopArgs) -> anyhow::Result<()> {
    let lc = super::lifecycle()?;
    if lc.store().load(&args.name)?.state.state == State::Stopped {
        if args.no_save && lc.discard_saved(&args.name)? {
            println!(
                "machine {} is not running; its saved state was discarded: the next start boots cold",
                args.name
            );
        } else {
            println!("machine {} is not running", args.name);
        }
        return Ok(());
    }
    let mode = match (args.force, args.no_save) {
        (true, _) => StopMode::Force,
        (false, true) => StopMode::Shutdown,
        (false, false) => StopMode::Save,
    };
    if mode != StopMode::Force {
        eprintln!("stopping machine {}", args.name);
    }
    let machine = lc.stop_with(&args.name, mode)?;
    println!("{}", stopped_message(&machine));
    Ok(())
}

/// What a finished stop says: saved (how big, how long) or stopped, and why not saved.
fn stopped_message(machine: &rmachine_machine::store::Machine) -> String {
    let name = &machine.name;
    match &machine.state.last_stop {
        Some(stop) if stop.saved => format!(
            "machine {name} saved ({} MiB in {:.1} s): `rmachine start {name}` resumes it; `rmachine stop --no-save {name}` discards it",
            stop.size_bytes.unwrap_or(0) >> 20,
            stop.save_ms.unwrap_or(0) as f64 / 1000.0
        ),
        Some(stop) if machine.spec.ssh.is_none() => format!(
            "machine {name} stopped (not saved: {})",
            stop.reason.as_deref().unwrap_or("no reason recorded")
        ),
        _ => format!("machine {name} stopped"),
    }
}
