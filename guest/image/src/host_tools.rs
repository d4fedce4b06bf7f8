//! Host-side docker tools from Debian trixie: the compose and buildx CLI plugins (into
//! `~/.docker/cli-plugins`, where the docker CLI finds them) and, where the host has no
//! `docker`, the docker CLI itself. Taken from the same packages as the guest's, through
//! the same separate apt configuration.

use std::path::{Path, PathBuf};
use std::process::Command;

use rmachine_machine::paths::Paths;

use crate::apt::Apt;
use crate::{command, ImageError, Progress};

/// (package, file inside it, installed name)
const PLUGINS: &[(&str, &str, &str)] = &[
    ("docker-compose", "usr/libexec/docker/cli-plugins/docker-compose", "docker-compose"),
    ("docker-buildx", "usr/libexec/docker/cli-plugins/docker-buildx", "docker-buildx"),
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
    paths: &Paths,
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
    let apt = Apt::setup(paths, mirror, progress)?;
    let scratch = paths.cache().join("host-tools");
    for (package, file, dst) in wanted {
        let version = apt.candidate(package)?;
        progress.detail(&format!("{package} {version}"));
        let deb = apt.download(package, &version, &apt.archives())?;
        let unpack = scratch.join(package);
        let _ = std::fs::remove_dir_all(&unpack);
        std::fs::create_dir_all(&unpack).map_err(ImageError::io("cannot create", &unpack))?;
        command::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpack), &scratch.join("host-tools.log"), &mut |_| {})?;
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
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).map_err(ImageError::io("cannot chmod", path))
}
