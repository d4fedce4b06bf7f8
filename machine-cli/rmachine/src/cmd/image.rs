//! `rmachine image build|ls|rm`.

use std::path::PathBuf;

use rmachine_machine::paths::Paths;
use rmachine_protocol::image::Arch;

use super::Format;

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
    }
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
