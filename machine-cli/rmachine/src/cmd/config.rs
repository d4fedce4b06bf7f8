//! `rmachine config get|set`: a machine's settings (applied at the next start), or the
//! defaults for new machines with `--defaults`.

use anyhow::{bail, Context};
use rmachine_machine::config::{self, parse_gib, parse_mib, DriverKind, Settings};

use super::DEFAULT_MACHINE;

#[derive(Debug, clap::Subcommand)]
pub enum ConfigCommand {
    /// Print settings (one key, or all).
    Get(GetArgs),
    /// Change a setting: cpus, memory, disk, driver or image.
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
    /// cpus, memory, disk, driver or image (default: all).
    pub key: Option<String>,
    #[command(flatten)]
    pub target: Target,
}

#[derive(Debug, clap::Args)]
pub struct SetArgs {
    /// cpus, memory, disk, driver or image.
    pub key: String,
    /// The new value (memory and disk take units: 4G, 512M).
    pub value: String,
    #[command(flatten)]
    pub target: Target,
}

pub fn run(command: ConfigCommand) -> anyhow::Result<()> {
    match command {
        ConfigCommand::Get(args) => get(args),
        ConfigCommand::Set(args) => set(args),
    }
}

const KEYS: [&str; 5] = ["cpus", "memory", "disk", "driver", "image"];

fn get(args: GetArgs) -> anyhow::Result<()> {
    let spec = if args.target.defaults {
        let store = super::store()?;
        config::read_defaults(&store.paths().defaults_file())?.resolve()
    } else {
        super::load(&args.target.machine)?.spec
    };
    let value = |key: &str| -> anyhow::Result<String> {
        Ok(match key {
            "cpus" => spec.cpus.to_string(),
            "memory" => format!("{}M", spec.memory_mib),
            "disk" => format!("{}G", spec.disk_size_gib),
            "driver" => spec.driver.as_str().to_string(),
            "image" => spec.image.clone().unwrap_or_else(|| "(newest)".into()),
            other => bail!("unknown setting {other:?}: use one of {}", KEYS.join(", ")),
        })
    };
    match args.key {
        Some(k) => println!("{}", value(&k)?),
        None => {
            for k in KEYS {
                println!("{k} = {}", value(k)?);
            }
        }
    }
    Ok(())
}

fn apply(settings: &mut Settings, key: &str, value: &str) -> anyhow::Result<()> {
    match key {
        "cpus" => {
            settings.cpus = Some(
                value
                    .parse()
                    .with_context(|| format!("cpus: {value:?} is not a number"))?,
            )
        }
        "memory" => settings.memory_mib = Some(parse_mib(value).map_err(anyhow::Error::msg)?),
        "disk" => settings.disk_size_gib = Some(parse_gib(value).map_err(anyhow::Error::msg)?),
        "driver" => {
            settings.driver = Some(match value {
                "auto" => DriverKind::Auto,
                "vmm" => DriverKind::Vmm,
                "qemu" => DriverKind::Qemu,
                "fake" => DriverKind::Fake,
                other => bail!("driver: unknown driver {other:?}: use auto, vmm, qemu or fake"),
            })
        }
        "image" => settings.image = Some(value.to_string()),
        other => bail!("unknown setting {other:?}: use one of {}", KEYS.join(", ")),
    }
    settings.validate()?;
    Ok(())
}

fn set(args: SetArgs) -> anyhow::Result<()> {
    let store = super::store()?;
    if args.target.defaults {
        let path = store.paths().defaults_file();
        let mut settings = config::read_defaults(&path)?;
        apply(&mut settings, &args.key, &args.value)?;
        config::write_defaults(&path, &settings)?;
        println!("defaults: {} = {}", args.key, args.value);
        return Ok(());
    }
    let machine = store.load(&args.target.machine)?;
    let mut settings = machine.file.clone();
    apply(&mut settings, &args.key, &args.value)?;
    if let Some(new) = settings.disk_size_gib {
        if new < machine.spec.disk_size_gib {
            bail!(
                "disk: cannot shrink the data disk from {}G to {new}G (data would be lost)",
                machine.spec.disk_size_gib
            );
        }
    }
    store.update(&machine.name, &settings)?;
    let note = if machine.state.state.has_hostagent() {
        " (applied at the next start)"
    } else {
        ""
    };
    println!("{}: {} = {}{note}", machine.name, args.key, args.value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_apply_parses_and_validates() {
        let mut s = Settings::default();
        apply(&mut s, "memory", "1G").unwrap();
        assert_eq!(s.memory_mib, Some(1024));
        apply(&mut s, "driver", "qemu").unwrap();
        assert_eq!(s.driver, Some(DriverKind::Qemu));
        assert!(apply(&mut s, "cpus", "many")
            .unwrap_err()
            .to_string()
            .contains("cpus"));
        assert!(apply(&mut s, "memory", "1M").is_err());
        assert!(apply(&mut s, "colour", "red")
            .unwrap_err()
            .to_string()
            .contains("unknown setting"));
    }
}
