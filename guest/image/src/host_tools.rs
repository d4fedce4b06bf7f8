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

/// A host tool taken from Debian trixie with the libraries it needs: trixie's C library is
/// newer than a bookworm host's, so the bundle brings its own and runs the tool through
/// trixie's dynamic loader. Unpacked into `host-tools/<name>` under the cache.
struct Bundle {
    /// Folder name under `host-tools`.
    name: &'static str,
    /// Packages unpacked into the bundle: the tool's and the libraries it links.
    packages: &'static [&'static str],
    /// The tool inside the bundle.
    binary: &'static str,
    /// Environment variable naming a binary to use instead (run directly).
    env_var: &'static str,
    /// The host's own binary, used when there is no bundle.
    host_binary: &'static str,
}

/// virtiofsd and the trixie libraries it was built against.
const VIRTIOFSD: Bundle = Bundle {
    name: "virtiofsd",
    packages: &[
        "virtiofsd",
        "libc6",
        "libseccomp2",
        "libcap-ng0",
        "libgcc-s1",
    ],
    binary: "usr/libexec/virtiofsd",
    env_var: "RMACHINE_VIRTIOFSD",
    host_binary: "/usr/libexec/virtiofsd",
};

/// passt (user-mode networking for rmachine-vmm's virtio-net), which needs only the C
/// library. Run through the loader, passt cannot re-exec its AVX2 build (it looks for
/// `<its /proc/self/exe>.avx2`), says so once on stderr and goes on with the generic one.
const PASST: Bundle = Bundle {
    name: "passt",
    packages: &["passt", "libc6"],
    binary: "usr/bin/passt",
    env_var: "RMACHINE_PASST",
    host_binary: "/usr/bin/passt",
};

/// How to run a host tool: through its bundle's loader and libraries, or a binary as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostTool {
    /// The dynamic loader to run it with (`None`: run the binary directly).
    pub loader: Option<PathBuf>,
    pub library_path: Option<PathBuf>,
    pub binary: PathBuf,
}

/// virtiofsd, the vhost-user backend of shared folders.
pub type Virtiofsd = HostTool;

/// passt, the user-mode network backend of rmachine-vmm machines.
pub type Passt = HostTool;

impl HostTool {
    /// A command that runs the tool; the caller adds its arguments.
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

    fn direct(binary: PathBuf) -> HostTool {
        HostTool {
            loader: None,
            library_path: None,
            binary,
        }
    }
}

impl Bundle {
    fn dir(&self, paths: &Paths) -> PathBuf {
        paths.cache().join("host-tools").join(self.name)
    }

    fn tool_in(&self, dir: &Path) -> HostTool {
        HostTool {
            loader: Some(dir.join("usr/lib64/ld-linux-x86-64.so.2")),
            library_path: Some(dir.join("usr/lib/x86_64-linux-gnu")),
            binary: dir.join(self.binary),
        }
    }

    /// The environment variable's binary, the installed bundle, or the host's binary.
    fn find(&self, paths: &Paths) -> Option<HostTool> {
        if let Some(p) = std::env::var_os(self.env_var)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
        {
            return p.is_file().then(|| HostTool::direct(p));
        }
        let dir = self.dir(paths);
        if dir.join(".complete").exists() {
            return Some(self.tool_in(&dir));
        }
        let host = PathBuf::from(self.host_binary);
        host.is_file().then(|| HostTool::direct(host))
    }

    /// Unpacks the packages into `<dir>.partial`, checks the tool answers `--version`, then
    /// renames the folder into place and marks it complete (with the version).
    fn install(
        &self,
        paths: &Paths,
        mirror: Option<&str>,
        progress: &dyn Progress,
    ) -> Result<HostTool, ImageError> {
        let dir = self.dir(paths);
        if dir.join(".complete").exists() {
            return Ok(self.tool_in(&dir));
        }
        let apt = Apt::setup(paths, mirror, progress)?;
        let partial = dir.with_extension("partial");
        let _ = std::fs::remove_dir_all(&partial);
        std::fs::create_dir_all(&partial).map_err(ImageError::io("cannot create", &partial))?;
        let log = paths.cache().join("host-tools/host-tools.log");
        let mut unpacked = Vec::new();
        for package in self.packages {
            let version = apt.candidate(package)?;
            progress.detail(&format!("{package} {version}"));
            let deb = apt.download(package, &version, &apt.archives())?;
            command::run(
                Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&partial),
                &log,
                &mut |_| {},
            )?;
            unpacked.push(format!("{package} {version}"));
        }
        // A failed start (missing library, wrong loader) fails here. passt prints its version
        // only to a terminal (it exits without flushing a piped stdout), so the package's
        // version stands in when the tool printed nothing.
        let printed = command::output(self.tool_in(&partial).command().arg("--version"))?;
        let version = match printed.lines().map(str::trim).find(|l| !l.is_empty()) {
            Some(line) => line.to_string(),
            None => unpacked.first().cloned().unwrap_or_default(),
        };
        progress.detail(&version);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::rename(&partial, &dir).map_err(ImageError::io("cannot install", &dir))?;
        std::fs::write(dir.join(".complete"), version)
            .map_err(ImageError::io("cannot write", &dir))?;
        Ok(self.tool_in(&dir))
    }
}

/// The virtiofsd to use: `RMACHINE_VIRTIOFSD`, the bundle `rmachine setup` installed, or
/// the host's own `/usr/libexec/virtiofsd`.
pub fn find_virtiofsd(paths: &Paths) -> Option<Virtiofsd> {
    VIRTIOFSD.find(paths)
}

/// Installs the virtiofsd bundle from Debian trixie (unless present) and checks it runs.
pub fn install_virtiofsd(
    paths: &Paths,
    mirror: Option<&str>,
    progress: &dyn Progress,
) -> Result<Virtiofsd, ImageError> {
    VIRTIOFSD.install(paths, mirror, progress)
}

/// The passt to use: `RMACHINE_PASST`, the bundle `rmachine setup` installed, or the
/// host's own `/usr/bin/passt`.
pub fn find_passt(paths: &Paths) -> Option<Passt> {
    PASST.find(paths)
}

/// Installs the passt bundle from Debian trixie (unless present) and checks it runs.
pub fn install_passt(
    paths: &Paths,
    mirror: Option<&str>,
    progress: &dyn Progress,
) -> Result<Passt, ImageError> {
    PASST.install(paths, mirror, progress)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FAKE: Bundle = Bundle {
        name: "fake",
        packages: &[],
        binary: "usr/bin/fake",
        env_var: "RMACHINE_TEST_FAKE_TOOL_UNSET",
        host_binary: "/nonexistent/fake",
    };

    #[test]
    fn test_complete_bundle_runs_through_its_own_loader() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::with_roots(dir.path().join("home"), dir.path().join("cache"));
        assert_eq!(FAKE.find(&paths), None);
        let bundle = dir.path().join("cache/host-tools/fake");
        std::fs::create_dir_all(&bundle).unwrap();
        assert_eq!(FAKE.find(&paths), None, "an unfinished bundle is not used");
        std::fs::write(bundle.join(".complete"), "fake 1.0").unwrap();
        let tool = FAKE.find(&paths).unwrap();
        let cmd = tool.command();
        assert_eq!(
            cmd.get_program(),
            bundle.join("usr/lib64/ld-linux-x86-64.so.2")
        );
        let args: Vec<_> = cmd.get_args().collect();
        assert_eq!(
            args,
            [
                std::ffi::OsStr::new("--library-path"),
                bundle.join("usr/lib/x86_64-linux-gnu").as_os_str(),
                bundle.join("usr/bin/fake").as_os_str()
            ]
        );
    }
}
