//! `rmachine image build` on Linux.

use std::path::PathBuf;

use anyhow::Context;
use rmachine_machine::paths::Paths;
use rmachine_protocol::image::Arch;

use super::BuildArgs;
use crate::progress::StepProgress;

pub fn run(paths: &Paths, args: BuildArgs) -> anyhow::Result<()> {
    let arch = args.arch.unwrap_or_else(Arch::host);
    let agent = match args.agent {
        Some(a) => a,
        None => default_agent(arch).with_context(|| {
            format!(
                "cannot find the agent binary for {arch}: build it with `cargo build --profile agent --target {} -p rmachine-agent`, or pass --agent PATH",
                arch.agent_target()
            )
        })?,
    };
    let jobs = args.jobs.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    let opts = rmachine_image::BuildOptions {
        arch,
        agent,
        jobs,
        mirror: args.mirror,
    };
    let progress = StepProgress::new();
    let dirs = rmachine_image::BuildDirs::new(paths.cache(), paths.images_dir());
    let manifest = rmachine_image::build(&dirs, &opts, &progress).context("image build failed")?;
    progress.done(&format!(
        "{} image {}: kernel {:.1} MiB, root filesystem {:.1} MiB",
        manifest.arch,
        manifest.version,
        manifest.kernel.size_bytes as f64 / 1048576.0,
        manifest.rootfs.size_bytes as f64 / 1048576.0
    ));
    Ok(())
}

/// The musl build for `arch` in the same target dir, or (for the host's architecture) the
/// agent binary next to this executable.
fn default_agent(arch: Arch) -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    let target = arch.agent_target();
    let mut candidates = vec![
        dir.join(format!("../{target}/agent/rmachine-agent")),
        dir.join(format!("../{target}/release/rmachine-agent")),
    ];
    if arch == Arch::host() {
        candidates.insert(0, dir.join("rmachine-agent"));
    }
    candidates.into_iter().find(|p| p.is_file())
}
