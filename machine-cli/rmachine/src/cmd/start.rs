//! `rmachine start [NAME]`: creates the machine when it does not exist (`default` when
//! no name is given), boots it, and makes its docker context current.

use rmachine_machine::docker_context;
use rmachine_machine::state::State;
use rmachine_machine::store::StoreError;

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
    let store = super::store()?;
    let machine = match store.load(&args.name) {
        Ok(m) => {
            if args.settings.settings() != Default::default() {
                anyhow::bail!(
                    "machine {} exists; change its settings with `rmachine config set` (applied at the next start)",
                    m.name
                );
            }
            m
        }
        Err(StoreError::NotFound(_)) => {
            eprintln!("creating machine {}", args.name);
            super::create::create(&args.name, &args.settings)?
        }
        Err(e) => return Err(e.into()),
    };
    start(&machine.name, !args.no_use)
}

/// Starts an existing machine with progress, then optionally makes its context current.
pub fn start(name: &str, use_context: bool) -> anyhow::Result<()> {
    let machine = super::load(name)?;
    if machine.state.state == State::Running {
        println!("machine {name} is already running");
    } else {
        super::create::write_context(&machine)?;
        let driver = rmachine_machine::driver::for_machine(&machine);
        let progress = StepProgress::new();
        use rmachine_image::Progress;
        progress.step(1, 1, &format!("starting machine {name}"));
        driver.start(&machine, &mut |detail| progress.detail(detail))?;
        let machine = super::load(name)?;
        progress.done(&format!(
            "machine {name} is running ({}; engine ready {:.1} s after boot)",
            machine.state.backend.as_deref().unwrap_or("?"),
            machine.state.engine_ready_ms.unwrap_or(0) as f64 / 1000.0
        ));
    }
    let context = docker_context::context_name(name);
    if use_context {
        docker_context::set_current(&docker_context::docker_config_dir()?, Some(&context))?;
        println!("docker context {context} is now current: `docker run` uses this machine");
    } else {
        println!(
            "docker context {context}: `docker --context {context} ...` or `rmachine use {name}`"
        );
    }
    Ok(())
}
