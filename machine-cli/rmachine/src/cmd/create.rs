//! `rmachine create [NAME]`: a new machine with its settings and docker context.

use rmachine_machine::config::{
    parse_gib, parse_mib, parse_mount, Arch, DriverKind, MountSpec, Settings,
};
use rmachine_machine::docker_context;

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
    #[arg(long, value_parser = DriverKind::parse)]
    pub driver: Option<DriverKind>,
    /// Guest image version (default: the newest installed of the machine's architecture).
    #[arg(long)]
    pub image: Option<String>,
    /// Guest architecture: amd64 or arm64 (default: the host's; another one runs under
    /// QEMU's software emulation).
    #[arg(long, value_parser = Arch::parse)]
    pub arch: Option<Arch>,
    /// Share a host folder with the machine at the same path: PATH or PATH:ro; repeat for
    /// more (default: your home directory).
    #[arg(long = "mount", value_parser = parse_mount)]
    pub mounts: Vec<MountSpec>,
    /// Share no host folder at all.
    #[arg(long, conflicts_with = "mounts")]
    pub no_mounts: bool,
    /// Join a network between machines (`rmachine network create`); repeat for more.
    #[arg(long = "network", value_name = "NAME")]
    pub networks: Vec<String>,
}

impl SettingsArgs {
    pub fn settings(&self) -> Settings {
        Settings {
            driver: self.driver,
            cpus: self.cpus,
            memory_mib: self.memory,
            disk_size_gib: self.disk,
            image: self.image.clone(),
            arch: self.arch,
            mounts: if self.no_mounts {
                Some(Vec::new())
            } else {
                Some(self.mounts.clone()).filter(|m| !m.is_empty())
            },
            networks: Some(self.networks.clone()).filter(|n| !n.is_empty()),
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
    #[command(flatten)]
    pub ssh: super::create_ssh::SshArgs,
}

pub fn run(args: CreateArgs) -> anyhow::Result<()> {
    if args.ssh.wanted(args.settings.driver) {
        return super::create_ssh::run(&args.name, &args.settings.settings(), &args.ssh);
    }
    let machine = super::lifecycle()?.create(&args.name, &args.settings.settings())?;
    println!(
        "created machine {} (docker context {})",
        machine.name,
        docker_context::context_name(&machine.name)
    );
    Ok(())
}
