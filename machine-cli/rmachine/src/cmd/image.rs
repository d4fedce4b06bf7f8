//! `rmachine image build|ls|rm|push|pull`.

use std::path::PathBuf;

use rmachine_machine::image_registry::{self, mib};
use rmachine_machine::paths::Paths;
use rmachine_protocol::image::Arch;

use super::Format;
use crate::progress::StepProgress;

// The image is built from Debian packages with debootstrap and a kernel build: on Linux.
#[cfg(target_os = "linux")]
#[path = "image/build_linux.rs"]
mod build;
#[cfg(not(target_os = "linux"))]
#[path = "image/build_other.rs"]
mod build;

#[derive(Debug, clap::Subcommand)]
pub enum ImageCommand {
    /// Build the guest image (kernel and root filesystem), reusing cached parts.
    Build(BuildArgs),
    /// List installed guest images: the user's, then those installed with rmachine.
    #[command(alias = "list")]
    Ls(LsArgs),
    /// Remove one of the user's guest images (images installed with rmachine go with it).
    Rm(RmArgs),
    /// Publish guest images to an OCI registry: one image per architecture under an
    /// image index at REF.
    Push(PushArgs),
    /// Install a guest image from an OCI registry (REF, as `image push` made it),
    /// verified by digest and by the image's own checksums.
    Pull(PullArgs),
}

#[derive(Debug, clap::Args)]
pub struct RegistryArgs {
    /// Speak plain HTTP to the registry (a registry on the loopback always is spoken to
    /// in plain HTTP, as Docker does).
    #[arg(long)]
    plain_http: bool,
}

impl RegistryArgs {
    fn options(&self) -> anyhow::Result<image_registry::Options> {
        Ok(image_registry::Options {
            plain_http: self.plain_http,
            docker_config: rmachine_machine::docker_context::docker_config_dir().ok(),
        })
    }
}

#[derive(Debug, clap::Args)]
pub struct PushArgs {
    /// Where to push: REGISTRY/REPOSITORY:TAG (e.g. localhost:5000/rmachine/guest:0.1.0).
    reference: String,
    /// The image versions to push, one per architecture (default: the newest usable
    /// image of each architecture installed).
    #[arg(long = "image", value_name = "VERSION")]
    images: Vec<String>,
    #[command(flatten)]
    registry: RegistryArgs,
    /// Output format of the result.
    #[arg(long, value_enum, default_value_t)]
    format: Format,
}

#[derive(Debug, clap::Args)]
pub struct PullArgs {
    /// What to pull: REGISTRY/REPOSITORY:TAG or REGISTRY/REPOSITORY@DIGEST.
    reference: String,
    /// Guest architecture: amd64 or arm64 (default: the host's).
    #[arg(long, value_parser = Arch::parse)]
    arch: Option<Arch>,
    #[command(flatten)]
    registry: RegistryArgs,
}

#[derive(Debug, clap::Args)]
pub struct BuildArgs {
    /// Guest architecture: amd64 or arm64 (default: the host's). An image of another
    /// architecture is cross-built (see the README).
    #[arg(long, value_parser = Arch::parse)]
    pub arch: Option<Arch>,
    /// The static agent binary, built for the image's architecture (default:
    /// RMACHINE_AGENT, or the musl build of that architecture in this binary's target
    /// directory).
    #[arg(long, env = "RMACHINE_AGENT")]
    pub agent: Option<PathBuf>,
    /// Parallel jobs for the kernel build (default: the number of CPUs).
    #[arg(long)]
    pub jobs: Option<usize>,
    /// Debian archive URL (default: the mirror the host's apt uses).
    #[arg(long)]
    pub mirror: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct LsArgs {
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    format: Format,
}

#[derive(Debug, clap::Args)]
pub struct RmArgs {
    /// The image version to remove (see `rmachine image ls`). (Not named `version`: that
    /// id is the `--version` flag's, and clap's debug checks refuse the clash.)
    #[arg(value_name = "VERSION")]
    image: String,
}

pub fn run(command: ImageCommand) -> anyhow::Result<()> {
    let paths = Paths::from_env()?;
    match command {
        ImageCommand::Build(args) => build::run(&paths, args),
        ImageCommand::Ls(args) => ls(&paths, args),
        ImageCommand::Rm(args) => {
            rmachine_machine::image_store::remove(&paths, &args.image)?;
            println!("removed image {}", args.image);
            Ok(())
        }
        ImageCommand::Push(args) => push(&paths, args),
        ImageCommand::Pull(args) => pull(&paths, args),
    }
}

fn push(paths: &Paths, args: PushArgs) -> anyhow::Result<()> {
    let images = if args.images.is_empty() {
        image_registry::default_push_set(paths)?
    } else {
        let listing = rmachine_machine::image_store::list(paths)?;
        let mut images = Vec::new();
        for version in &args.images {
            let image = (listing.images.iter())
                .find(|i| &i.manifest.version == version)
                .ok_or_else(|| {
                    anyhow::anyhow!("image {version} is not installed (see `rmachine image ls`)")
                })?;
            images.push(image.clone());
        }
        images
    };
    let progress = StepProgress::new();
    progress.step(1, 1, &format!("pushing to {}", args.reference));
    let pushed = image_registry::push(
        &args.reference,
        &images,
        &args.registry.options()?,
        &mut |line| progress.detail(line),
    )?;
    progress.done(&format!(
        "pushed {} to {} ({} sent)",
        pushed.images.join(", "),
        pushed.reference,
        mib(pushed.bytes)
    ));
    match args.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&pushed)?),
        Format::Table => println!(
            "{}@{}",
            pushed.reference.split('@').next().unwrap_or_default(),
            pushed.digest
        ),
    }
    Ok(())
}

fn pull(paths: &Paths, args: PullArgs) -> anyhow::Result<()> {
    let arch = args.arch.unwrap_or_else(Arch::host);
    let progress = StepProgress::new();
    progress.step(
        1,
        1,
        &format!("pulling the {arch} image of {}", args.reference),
    );
    let pulled = image_registry::pull(
        paths,
        &args.reference,
        arch,
        &args.registry.options()?,
        &mut |line| progress.detail(line),
    )?;
    let m = &pulled.image.manifest;
    if pulled.already_installed {
        progress.done(&format!(
            "image {} ({arch}) is installed already",
            m.version
        ));
    } else {
        progress.done(&format!(
            "installed image {} ({arch}, {} downloaded) in {}",
            m.version,
            mib(pulled.bytes),
            pulled.image.dir.display()
        ));
    }
    Ok(())
}

fn ls(paths: &Paths, args: LsArgs) -> anyhow::Result<()> {
    let listing = rmachine_machine::image_store::list(paths)?;
    match args.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&listing.images)?),
        Format::Table => {
            println!(
                "{:<26} {:<6} {:>10} {:>12} {:>8}  {:<7} KERNEL SOURCE",
                "VERSION", "ARCH", "KERNEL", "ROOTFS", "PROTOCOL", "SOURCE"
            );
            for image in &listing.images {
                let m = &image.manifest;
                // An image of another agent protocol is listed, but never booted.
                let protocol = match image.usable() {
                    true => m.protocol.to_string(),
                    false => format!("{}(!)", m.protocol),
                };
                println!(
                    "{:<26} {:<6} {:>8.1}Mi {:>10.1}Mi {:>8}  {:<7} {}",
                    m.version,
                    m.arch,
                    m.kernel.size_bytes as f64 / 1048576.0,
                    m.rootfs.size_bytes as f64 / 1048576.0,
                    protocol,
                    image.source,
                    m.kernel_source
                );
            }
            println!();
            println!("user images:   {}", paths.images_dir().display());
            match paths.system_images_dir() {
                Some(dir) if dir.is_dir() => {
                    println!("system images: {} (read-only)", dir.display())
                }
                Some(dir) => println!("system images: {} (absent)", dir.display()),
                None => println!("system images: none"),
            }
            if listing.images.iter().any(|i| !i.usable()) {
                println!(
                    "(!) another agent protocol than this rmachine's ({}): not booted",
                    rmachine_protocol::PROTOCOL_VERSION
                );
            }
        }
    }
    for problem in &listing.broken {
        eprintln!(
            "warning: {}",
            rmachine_machine::lifecycle::error_chain(problem)
        );
    }
    Ok(())
}
