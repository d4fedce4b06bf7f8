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

/// Debian trixie packages whose files make up a self-contained virtiofsd: the daemon and
/// the trixie C library it was built against (a bookworm host's is too old), run through
/// trixie's own dynamic loader.
const VIRTIOFSD_PACKAGES: &[&str] = &["virtiofsd", "libc6", "libseccomp2", "libcap-ng0", "libgcc-s1"];

/// How to run virtiofsd: through its own loader and libraries, or the host's binary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Virtiofsd {
    /// The dynamic loader to run it with (`None`: run the binary directly).
    pub loader: Option<PathBuf>,
    pub library_path: Option<PathBuf>,
    pub binary: PathBuf,
}

impl Virtiofsd {
    /// A command that runs virtiofsd; the caller adds its arguments.
    pub fn command(&self) -> Command {
        match (&self.loader, &self.library_path) {
            (Some(loader), Some(libs)) => {
                let mut cmd = Command::new(loader);
                cmd.arg("--library-path").arg(libs).arg(&self.binary);
                cmd
            }
            _ => Command::new(&self.binary),
        }
    }
}

fn virtiofsd_dir(paths: &Paths) -> PathBuf {
    paths.cache().join("host-tools/virtiofsd")
}

fn bundled(dir: &Path) -> Virtiofsd {
    Virtiofsd {
        loader: Some(dir.join("usr/lib64/ld-linux-x86-64.so.2")),
        library_path: Some(dir.join("usr/lib/x86_64-linux-gnu")),
        binary: dir.join("usr/libexec/virtiofsd"),
    }
}

/// The virtiofsd to use: `RMACHINE_VIRTIOFSD`, the bundle `rmachine setup` installed, or
/// the host's own `/usr/libexec/virtiofsd`.
pub fn find_virtiofsd(paths: &Paths) -> Option<Virtiofsd> {
    if let Some(p) = std::env::var_os("RMACHINE_VIRTIOFSD").map(PathBuf::from) {
        return p.is_file().then_some(Virtiofsd { loader: None, library_path: None, binary: p });
    }
    let dir = virtiofsd_dir(paths);
    if dir.join(".complete").exists() {
        return Some(bundled(&dir));
    }
    let host = PathBuf::from("/usr/libexec/virtiofsd");
    host.is_file().then_some(Virtiofsd { loader: None, library_path: None, binary: host })
}

/// Installs the virtiofsd bundle from Debian trixie (unless present) and checks it runs.
pub fn install_virtiofsd(paths: &Paths, mirror: Option<&str>, progress: &dyn Progress) -> Result<Virtiofsd, ImageError> {
    let dir = virtiofsd_dir(paths);
    if dir.join(".complete").exists() {
        return Ok(bundled(&dir));
    }
    let apt = Apt::setup(paths, mirror, progress)?;
    let partial = dir.with_extension("partial");
    let _ = std::fs::remove_dir_all(&partial);
    std::fs::create_dir_all(&partial).map_err(ImageError::io("cannot create", &partial))?;
    let log = paths.cache().join("host-tools/host-tools.log");
    for package in VIRTIOFSD_PACKAGES {
        let version = apt.candidate(package)?;
        progress.detail(&format!("{package} {version}"));
        let deb = apt.download(package, &version, &apt.archives())?;
        command::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&partial), &log, &mut |_| {})?;
    }
    let tool = bundled(&partial);
    let version = command::output(tool.command().arg("--version"))?;
    progress.detail(version.trim());
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(&partial, &dir).map_err(ImageError::io("cannot install", &dir))?;
    std::fs::write(dir.join(".complete"), version).map_err(ImageError::io("cannot write", &dir))?;
    Ok(bundled(&dir))
}
