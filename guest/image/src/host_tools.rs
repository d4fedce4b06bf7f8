//! Host-side tools from Debian trixie, taken from the same packages as the guest's through
//! the same separate apt configuration: the compose and buildx CLI plugins (into
//! `~/.docker/cli-plugins`, where the docker CLI finds them), where the host has no
//! `docker` the docker CLI itself, and the packages of the host daemons' bundles.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::apt::Apt;
use crate::BuildDirs;
use crate::{command, ImageError, Progress};

/// (package, file inside it, installed name)
const PLUGINS: &[(&str, &str, &str)] = &[
    (
        "docker-compose",
        "usr/libexec/docker/cli-plugins/docker-compose",
        "docker-compose",
    ),
    (
        "docker-buildx",
        "usr/libexec/docker/cli-plugins/docker-buildx",
        "docker-buildx",
    ),
];

const DOCKER_CLI: (&str, &str) = ("docker-cli", "usr/bin/docker");

/// What [`install`] did.
#[derive(Debug, Default)]
pub struct Installed {
    pub plugins: Vec<PathBuf>,
    pub docker_cli: Option<PathBuf>,
}

/// Installs the missing CLI plugins into `plugin_dir` and, when `docker` is not on PATH,
/// the docker CLI into `bin_dir`. Present tools are left alone.
pub fn install(
    dirs: &BuildDirs,
    plugin_dir: &Path,
    bin_dir: &Path,
    mirror: Option<&str>,
    progress: &dyn Progress,
) -> Result<Installed, ImageError> {
    let mut wanted: Vec<(&str, &str, PathBuf)> = PLUGINS
        .iter()
        .map(|(pkg, file, name)| (*pkg, *file, plugin_dir.join(name)))
        .filter(|(_, _, dst)| !dst.exists())
        .collect();
    let need_cli = crate::tools::which("docker").is_none();
    if need_cli {
        wanted.push((DOCKER_CLI.0, DOCKER_CLI.1, bin_dir.join("docker")));
    }
    let mut installed = Installed::default();
    if wanted.is_empty() {
        progress.finish("docker CLI, compose and buildx present");
        return Ok(installed);
    }
    let apt = Apt::setup(dirs, mirror, progress)?;
    let scratch = dirs.host_tools_scratch();
    for (package, file, dst) in wanted {
        let version = apt.candidate(package)?;
        progress.detail(&format!("{package} {version}"));
        let deb = apt.download(package, &version, &apt.archives())?;
        let unpack = scratch.join(package);
        let _ = std::fs::remove_dir_all(&unpack);
        std::fs::create_dir_all(&unpack).map_err(ImageError::io("cannot create", &unpack))?;
        command::run(
            Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpack),
            &scratch.join("host-tools.log"),
            &mut |_| {},
        )?;
        let parent = dst.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(parent).map_err(ImageError::io("cannot create", parent))?;
        let src = unpack.join(file);
        std::fs::copy(&src, &dst).map_err(ImageError::io("cannot install", &dst))?;
        set_executable(&dst)?;
        let _ = std::fs::remove_dir_all(&unpack);
        if package == DOCKER_CLI.0 {
            installed.docker_cli = Some(dst);
        } else {
            installed.plugins.push(dst);
        }
    }
    Ok(installed)
}

fn set_executable(path: &Path) -> Result<(), ImageError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .map_err(ImageError::io("cannot chmod", path))
}

/// Unpacks the newest trixie build of each of `packages` into `dest` (the bundles of host
/// daemons: `rmachine_machine::host_tools::Bundle::install`; a package of another
/// architecture is named with it: `busybox-static:arm64`); returns "package version" for
/// each.
pub fn unpack_packages(
    dirs: &BuildDirs,
    mirror: Option<&str>,
    packages: &[&str],
    dest: &Path,
    progress: &dyn Progress,
) -> Result<Vec<String>, ImageError> {
    let apt = Apt::setup(dirs, mirror, progress)?;
    let scratch = dirs.host_tools_scratch();
    std::fs::create_dir_all(&scratch).map_err(ImageError::io("cannot create", &scratch))?;
    let log = scratch.join("host-tools.log");
    let mut unpacked = Vec::new();
    for package in packages {
        let version = apt.candidate(package)?;
        progress.detail(&format!("{package} {version}"));
        let deb = apt.download(package, &version, &apt.archives())?;
        command::run(
            Command::new("dpkg-deb").arg("-x").arg(&deb).arg(dest),
            &log,
            &mut |_| {},
        )?;
        unpacked.push(format!("{package} {version}"));
    }
    Ok(unpacked)
}
