//! `rmachine export NAME FILE [--include-secrets]`: an ssh machine's settings, host key
//! pin and probe record (with `--include-secrets`, its TLS client key material; never the
//! CA key) in one file for `rmachine import` on another computer.

#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// Machine name (an ssh machine).
    pub name: String,
    /// The file to write (readable by you alone).
    pub file: std::path::PathBuf,
    /// Also export the engine's TLS client certificate and key (--engine-tls machines).
    #[arg(long)]
    pub include_secrets: bool,
}

pub fn run(args: ExportArgs) -> anyhow::Result<()> {
    use anyhow::Context;
    let bundle = super::lifecycle()?.export(&args.name, args.include_secrets)?;
    let text = serde_json::to_string_pretty(&bundle)?;
    rmachine_machine::store::write_atomic(&args.file, text.as_bytes())
        .with_context(|| format!("cannot write {}", args.file.display()))?;
    println!(
        "exported machine {} to {}{}",
        args.name,
        args.file.display(),
        if bundle.tls_client.is_empty() {
            ""
        } else {
            " (with its TLS client key: keep the file private)"
        }
    );
    Ok(())
}
