//! One module per subcommand; shared argument types and store access live here.

pub mod config;
pub mod create;
pub mod env;
pub mod hostagent;
pub mod image;
pub mod inspect;
pub mod ip;
pub mod logs;
pub mod ls;
pub mod restart;
pub mod rm;
pub mod setup;
pub mod start;
pub mod status;
pub mod stop;
pub mod use_context;
pub mod version;

use rmachine_machine::paths::Paths;
use rmachine_machine::store::{Machine, Store};

/// The machine a command acts on when none is named.
pub const DEFAULT_MACHINE: &str = "default";

/// Output format of listing commands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    #[default]
    Table,
    Json,
}

pub fn store() -> anyhow::Result<Store> {
    Ok(Store::new(Paths::from_env()?))
}

pub fn load(name: &str) -> anyhow::Result<Machine> {
    Ok(store()?.load(name)?)
}

/// Bytes as MiB or GiB for tables.
pub fn human_mib(mib: u64) -> String {
    if mib >= 1024 && mib.is_multiple_of(1024) {
        format!("{}GiB", mib / 1024)
    } else {
        format!("{mib}MiB")
    }
}
