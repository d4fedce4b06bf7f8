//! `rmachine rm [-f] NAME...`: removes machines, their data disks and docker contexts.

use rmachine_machine::docker_context;
use rmachine_machine::state::State;
use rmachine_machine::store::StoreError;

#[derive(Debug, clap::Args)]
pub struct RmArgs {
    /// Machine names.
    #[arg(required = true)]
    pub names: Vec<String>,
    /// Stop a running machine first (killing it).
    #[arg(long, short)]
    pub force: bool,
}

pub fn run(args: RmArgs) -> anyhow::Result<()> {
    let store = super::store()?;
    for name in &args.names {
        let machine = match store.load(name) {
            Ok(m) => Some(m),
            // A machine whose machine.toml is broken can still be removed with --force.
            Err(StoreError::Config(_)) if args.force => None,
            Err(e) => return Err(e.into()),
        };
        if let Some(m) = &machine {
            let busy = !matches!(m.state.state, State::Stopped | State::Error(_));
            if busy && !args.force {
                return Err(StoreError::Busy {
                    name: name.clone(),
                    state: m.state.state.name(),
                }
                .into());
            }
            // Also for an error state: a VM process may be left.
            let driver = rmachine_machine::driver::for_machine(m);
            driver.kill(m)?;
            driver.remove(m)?;
        }
        store.remove(name)?;
        if let Ok(dir) = docker_context::docker_config_dir() {
            docker_context::remove(&dir, &docker_context::context_name(name))?;
        }
        println!("removed machine {name}");
    }
    Ok(())
}
