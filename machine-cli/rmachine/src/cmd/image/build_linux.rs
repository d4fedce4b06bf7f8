//! `rmachine image build` on Linux.

use std::path::PathBuf;

use anyhow::Context;
use rmachine_machine::paths::Paths;

use super::BuildArgs;
use crate::progress::StepProgress;

pub fn run(paths: &Paths, args: BuildArgs) -> anyhow::Result<()> {
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
