//! `rmachine version`.

use super::Format;

#[derive(Debug, clap::Args)]
pub struct VersionArgs {
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    format: Format,
}

pub fn run(args: VersionArgs) -> anyhow::Result<()> {
    let version = env!("CARGO_PKG_VERSION");
    let protocol = rmachine_protocol::PROTOCOL_VERSION;
    match args.format {
        Format::Json => println!(
            "{}",
            serde_json::json!({ "version": version, "protocol": protocol })
        ),
        Format::Table => println!("rmachine {version}\nagent protocol {protocol}"),
    }
    Ok(())
}
