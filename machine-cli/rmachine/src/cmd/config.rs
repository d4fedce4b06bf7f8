//! `rmachine config get|set`: a machine's settings (applied at the next start), or the
//! defaults for new machines with `--defaults`.

use rmachine_machine::config;

use super::DEFAULT_MACHINE;

#[derive(Debug, clap::Subcommand)]
pub enum ConfigCommand {
    /// Print settings (one key, or all).
    Get(GetArgs),
    /// Change a setting: cpus, memory, disk, driver, image, image-source (an OCI reference a
    /// start pulls the image from when none is installed), arch, networks (a,b) or the
    /// engine's daemon.json (`engine` as a JSON object, or `engine.KEY VALUE`).
    Set(SetArgs),
}

#[derive(Debug, clap::Args)]
pub struct Target {
    /// Machine name.
    #[arg(long, short, default_value = DEFAULT_MACHINE)]
    pub machine: String,
    /// Act on the defaults for new machines instead.
    #[arg(long, conflicts_with = "machine")]
    pub defaults: bool,
}

#[derive(Debug, clap::Args)]
pub struct GetArgs {
    /// cpus, memory, disk, driver, image, image-source, arch, networks, engine or engine.KEY
    /// (default: all).
    pub key: Option<String>,
    #[command(flatten)]
    pub target: Target,
}

#[derive(Debug, clap::Args)]
pub struct SetArgs {
    /// cpus, memory, disk, driver, image, image-source, arch, networks, engine or engine.KEY.
    pub key: String,
    /// The new value (memory and disk take units: 4G, 512M; engine.KEY takes JSON or
    /// text: `'["r:5000"]'`, `local`; an empty value removes it).
    pub value: String,
    #[command(flatten)]
    pub target: Target,
}

pub fn run(command: ConfigCommand) -> anyhow::Result<()> {
    let lc = super::lifecycle()?;
    match command {
        ConfigCommand::Get(args) => {
            let spec = if args.target.defaults {
                lc.defaults()?.resolve()
            } else {
                lc.store().load(&args.target.machine)?.spec
            };
            match args.key {
                Some(k) => println!("{}", spec.get(&k)?),
                None => {
                    for k in config::KEYS {
                        println!("{k} = {}", spec.get(k)?);
                    }
                }
            }
        }
        ConfigCommand::Set(args) if args.target.defaults => {
            lc.set_default(&args.key, &args.value)?;
            println!("defaults: {} = {}", args.key, args.value);
        }
        ConfigCommand::Set(args) => {
            let machine = lc.set_setting(&args.target.machine, &args.key, &args.value)?;
            let note = if machine.state.state.has_hostagent() {
                " (applied at the next start)"
            } else {
                ""
            };
            println!("{}: {} = {}{note}", machine.name, args.key, args.value);
        }
    }
    Ok(())
}
