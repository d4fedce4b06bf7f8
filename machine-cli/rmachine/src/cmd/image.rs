//! `rmachine image build|ls|rm`.

use std::path::PathBuf;

use anyhow::Context;
use rmachine_machine::paths::Paths;

use super::Format;
use crate::progress::StepProgress;

#[derive(Debug, clap::Subcommand)]
pub enum ImageCommand {
    /// Build the guest image (kernel and root filesystem), reusing cached parts.
    Build(BuildArgs),
    /// List installed guest images.
    #[command(alias = "list")]
    Ls(LsArgs),
    /// Remove an installed guest image.
    Rm(RmArgs),
}

#[derive(Debug, clap::Args)]
pub struct BuildArgs {
    /// The static agent binary (default: RMACHINE_AGENT, or the musl build beside this
    /// binary's target directory).
    #[arg(long, env = "RMACHINE_AGENT")]
    agent: Option<PathBuf>,
    /// Parallel jobs for the kernel build (default: the number of CPUs).
    #[arg(long)]
    jobs: Option<usize>,
    /// Debian archive URL (default: the mirror the host's apt uses).
    #[arg(long)]
    mirror: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct LsArgs {
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    format: Format,
}

#[derive(Debug, clap::Args)]
pub struct RmArgs {
    /// The image version to remove (see `rmachine image ls`).
    version: String,
}

pub fn run(command: ImageCommand) -> anyhow::Result<()> {
    let paths = Paths::from_env()?;
    match command {
        ImageCommand::Build(args) => build(&paths, args),
        ImageCommand::Ls(args) => ls(&paths, args),
        ImageCommand::Rm(args) => {
            rmachine_machine::image_store::remove(&paths, &args.version)?;
            println!("removed image {}", args.version);
            Ok(())
        }
    }
}

fn build(paths: &Paths, args: BuildArgs) -> anyhow::Result<()> {
    let agent = match args.agent {
        Some(a) => a,
        None => default_agent().context("cannot find the agent binary: pass --agent PATH")?,
    };
    let jobs = args.jobs.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    let opts = rmachine_image::BuildOptions {
        agent,
        jobs,
        mirror: args.mirror,
    };
    let progress = StepProgress::new();
    let dirs = rmachine_image::BuildDirs::new(paths.cache(), paths.images_dir());
    let manifest = rmachine_image::build(&dirs, &opts, &progress).context("image build failed")?;
    progress.done(&format!(
        "image {}: kernel {:.1} MiB, root filesystem {:.1} MiB",
        manifest.version,
        manifest.kernel.size_bytes as f64 / 1048576.0,
        manifest.rootfs.size_bytes as f64 / 1048576.0
    ));
    Ok(())
}

/// The agent binary next to this executable, or the musl build of the same target dir.
fn default_agent() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    [
        dir.join("rmachine-agent"),
        dir.join("../x86_64-unknown-linux-musl/agent/rmachine-agent"),
        dir.join("../x86_64-unknown-linux-musl/release/rmachine-agent"),
    ]
    .into_iter()
    .find(|p| p.is_file())
}

fn ls(paths: &Paths, args: LsArgs) -> anyhow::Result<()> {
    let images = rmachine_machine::image_store::list(paths)?;
    match args.format {
        Format::Json => {
            let list: Vec<_> = images.iter().map(|(m, _)| m).collect();
            println!("{}", serde_json::to_string_pretty(&list)?);
        }
        Format::Table => {
            println!(
                "{:<22} {:>10} {:>12} {:>8}  KERNEL SOURCE",
                "VERSION", "KERNEL", "ROOTFS", "PROTOCOL"
            );
            for (m, _) in &images {
                println!(
                    "{:<22} {:>8.1}Mi {:>10.1}Mi {:>8}  {}",
                    m.version,
                    m.kernel.size_bytes as f64 / 1048576.0,
                    m.rootfs.size_bytes as f64 / 1048576.0,
                    m.protocol,
                    m.kernel_source
                );
            }
        }
    }
    Ok(())
}
