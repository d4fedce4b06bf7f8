//! `rmachine cp SRC NAME:DST` and `rmachine cp NAME:SRC DST` (the copy engine is
//! `rmachine_machine::copy`).

pub const AFTER_HELP: &str = "\
Either SRC or DST is NAME:PATH, a path in machine NAME (relative paths start at /root).

Like `docker cp`:
  a file to an existing folder      lands in the folder under its own name
  a file to any other path          is written there (the parent folder must exist)
  a folder to an existing folder    is copied into it (DST/SRC-NAME)
  a folder to a new path            is copied as that path
  SRC ending in /.                  copies the folder's contents instead
Symbolic links are copied as links. Files written in the guest belong to root.

Examples:
  rmachine cp ./site default:/srv/site
  rmachine cp default:/var/log/rmachine-agent.log .";

#[derive(Debug, clap::Args)]
pub struct CpArgs {
    /// What to copy: a host path, or NAME:PATH in a machine.
    #[arg(value_name = "SRC")]
    pub src: String,
    /// Where to copy it: NAME:PATH in a machine, or a host path.
    #[arg(value_name = "DST")]
    pub dst: String,
}

pub fn run(args: CpArgs) -> anyhow::Result<()> {
    let copied = rmachine_machine::copy::copy(&super::store()?, &args.src, &args.dst)?;
    if let Some(warning) = copied.warning {
        eprintln!("rmachine: warning: {warning}");
    }
    Ok(())
}
