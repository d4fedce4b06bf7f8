//! One module per subcommand: flag parsing and printing over the `machine` library's
//! [`Lifecycle`] (the same calls the desktop app makes).

pub mod completion;
pub mod config;
pub mod cp;
pub mod create;
pub mod env;
pub mod hostagent;
pub mod image;
pub mod inspect;
pub mod ip;
pub mod logs;
pub mod ls;
pub mod network;
pub mod network_switch;
pub mod restart;
pub mod rm;
pub mod setup;
pub mod shell;
pub mod start;
pub mod status;
pub mod stop;
pub mod use_context;
pub mod version;

use rmachine_machine::lifecycle::Lifecycle;
pub use rmachine_machine::lifecycle::DEFAULT_MACHINE;
use rmachine_machine::paths::Paths;
use rmachine_machine::store::{Machine, Store};

/// Output format of listing commands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    #[default]
    Table,
    Json,
}

/// The machine store and docker config folder of this environment.
pub fn lifecycle() -> anyhow::Result<Lifecycle> {
    Ok(Lifecycle::from_env()?)
}

pub fn store() -> anyhow::Result<Store> {
    Ok(Store::new(Paths::from_env()?))
}

pub fn load(name: &str) -> anyhow::Result<Machine> {
    Ok(store()?.load(name)?)
}

/// Ends `rmachine` with this exit status without printing an error (the status of a
/// command run in the guest, which printed its own messages).
#[derive(Debug)]
pub struct ExitWith(pub u8);

impl std::fmt::Display for ExitWith {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit status {}", self.0)
    }
}

impl std::error::Error for ExitWith {}

/// Bytes as MiB or GiB for tables.
pub fn human_mib(mib: u64) -> String {
    if mib >= 1024 && mib.is_multiple_of(1024) {
        format!("{}GiB", mib / 1024)
    } else {
        format!("{mib}MiB")
    }
}
