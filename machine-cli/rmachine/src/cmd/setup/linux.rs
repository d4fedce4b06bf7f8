//! `rmachine setup` on Linux: Debian trixie's tools.

use std::path::PathBuf;

use anyhow::Context;
use rmachine_machine::host_tools;

use super::SetupArgs;
use crate::progress::StepProgress;

pub fn run(args: SetupArgs) -> anyhow::Result<()> {
    let paths = rmachine_machine::paths::Paths::from_env()?;
    let plugin_dir = match args.plugin_dir {
        Some(d) => d,
        None => rmachine_machine::docker_context::docker_config_dir()?.join("cli-plugins"),
    };
    let bin_dir = match args.bin_dir {
        Some(d) => d,
        None if rmachine_image::is_root() => PathBuf::from("/usr/local/bin"),
        None => {
            PathBuf::from(std::env::var_os("HOME").context("HOME is not set")?).join(".local/bin")
        }
    };
    let progress = StepProgress::new();
    progress.step(1, 3, "docker CLI tools");
    let dirs = rmachine_image::BuildDirs::new(paths.cache(), paths.images_dir());
    let done = rmachine_image::host_tools::install(
        &dirs,
        &plugin_dir,
        &bin_dir,
        args.mirror.as_deref(),
        &progress,
    )?;
    let install_bundle = |bundle: &host_tools::Bundle| {
        // Installed with rmachine (the package carries it): nothing to fetch.
        if let Some(tool) = bundle.system(&paths) {
            progress.detail("installed with rmachine");
            return Ok(tool);
        }
        bundle.install(
            &paths,
            |dest, packages| {
                rmachine_image::host_tools::unpack_packages(
                    &dirs,
                    args.mirror.as_deref(),
                    packages,
                    dest,
                    &progress,
                )
                .map_err(|e| rmachine_machine::lifecycle::error_chain(&e))
            },
            &mut |version| progress.detail(version),
        )
    };
    progress.step(2, 3, "virtiofsd (shared folders)");
    let virtiofsd = install_bundle(&host_tools::VIRTIOFSD)?;
    progress.step(3, 3, "passt (machine networking)");
    let passt = install_bundle(&host_tools::PASST)?;
    println!("virtiofsd: {}", virtiofsd.binary.display());
    println!("passt: {}", passt.binary.display());
    for p in &done.plugins {
        println!("installed {}", p.display());
    }
    if let Some(cli) = &done.docker_cli {
        println!("installed {}", cli.display());
    }
    progress.done("docker CLI, compose, buildx, virtiofsd and passt ready");
    Ok(())
}
