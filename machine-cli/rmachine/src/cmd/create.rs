//! `rmachine create [NAME]`: a new machine with its settings and docker context.

use anyhow::Context;
use rmachine_machine::config::{parse_gib, parse_mib, DriverKind, Settings};
use rmachine_machine::docker_context;
use rmachine_machine::store::Machine;

use super::DEFAULT_MACHINE;

/// Settings flags shared by `create` and `start`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct SettingsArgs {
    /// Virtual CPUs (default 2).
    #[arg(long)]
    pub cpus: Option<u32>,
    /// Guest memory, e.g. 2048, 2G or 512M (default 2G).
    #[arg(long, value_parser = parse_mib)]
    pub memory: Option<u32>,
    /// Data disk size, e.g. 64G (default 64G; sparse).
    #[arg(long, value_parser = parse_gib)]
    pub disk: Option<u32>,
    /// Driver: auto (rmachine-vmm where it can run, else qemu), vmm, qemu, or fake (tests).
    #[arg(long, value_parser = parse_driver)]
    pub driver: Option<DriverKind>,
    /// Guest image version (default: the newest installed).
    #[arg(long)]
    pub image: Option<String>,
}

fn parse_driver(s: &str) -> Result<DriverKind, String> {
    match s {
        "auto" => Ok(DriverKind::Auto),
        "vmm" => Ok(DriverKind::Vmm),
        "qemu" => Ok(DriverKind::Qemu),
        "fake" => Ok(DriverKind::Fake),
        other => Err(format!("unknown driver {other:?}: use auto, vmm, qemu or fake")),
    }
}

impl SettingsArgs {
    pub fn settings(&self) -> Settings {
        Settings {
            driver: self.driver,
            cpus: self.cpus,
            memory_mib: self.memory,
            disk_size_gib: self.disk,
            image: self.image.clone(),
            ..Settings::default()
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    /// Machine name.
    #[arg(default_value = DEFAULT_MACHINE)]
    pub name: String,
    #[command(flatten)]
    pub settings: SettingsArgs,
}

pub fn run(args: CreateArgs) -> anyhow::Result<()> {
    let machine = create(&args.name, &args.settings)?;
    println!("created machine {} (docker context {})", machine.name, docker_context::context_name(&machine.name));
    Ok(())
}

/// Creates the machine, its data disk and its docker context.
pub fn create(name: &str, settings: &SettingsArgs) -> anyhow::Result<Machine> {
    let store = super::store()?;
    let machine = store.create(name, &settings.settings())?;
    let driver = rmachine_machine::driver::for_machine(&machine);
    if let Err(e) = driver.create(&machine) {
        let _ = store.remove(name);
        return Err(e).context("cannot prepare the machine");
    }
    write_context(&machine)?;
    Ok(machine)
}

/// Writes (or refreshes) the machine's docker context.
pub fn write_context(machine: &Machine) -> anyhow::Result<()> {
    let dir = docker_context::docker_config_dir()?;
    docker_context::write(
        &dir,
        &docker_context::context_name(&machine.name),
        &machine.files.docker_socket(),
        &format!("rmachine machine {}", machine.name),
    )?;
    Ok(())
}
