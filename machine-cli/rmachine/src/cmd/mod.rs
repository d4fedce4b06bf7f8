//! One module per subcommand.

pub mod image;
pub mod version;

/// Output format of listing commands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    #[default]
    Table,
    Json,
}
