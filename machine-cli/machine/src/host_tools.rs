//! Host daemons a machine runs beside its VM: virtiofsd (shared folders) and passt
//! (networking under rmachine-vmm). Each is a bundle taken from Debian trixie with the
//! libraries it needs: trixie's C library is newer than a bookworm host's, so the bundle
//! brings its own and runs the tool through trixie's dynamic loader. Bundles are unpacked
//! into `host-tools/<name>` under the cache by `rmachine setup`, or installed with rmachine
//! (the .deb carries both) in the system folder's `host-tools/<name>`; every machine start
//! finds them there.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::paths::Paths;

/// One bundled host tool.
#[derive(Debug)]
pub struct Bundle {
    /// Folder name under `host-tools`.
    pub name: &'static str,
    /// Debian trixie packages unpacked into the bundle: the tool's and the libraries it links.
    pub packages: &'static [&'static str],
    /// The tool inside the bundle.
    pub binary: &'static str,
    /// Environment variable naming a binary to use instead (run directly).
    pub env_var: &'static str,
    /// The host's own binary, used when there is no bundle.
    pub host_binary: &'static str,
}

/// virtiofsd and the trixie libraries it was built against.
pub const VIRTIOFSD: Bundle = Bundle {
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
pub const PASST: Bundle = Bundle {
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

/// Why a bundle could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum HostToolError {
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot unpack {tool}: {message}")]
    Unpack { tool: &'static str, message: String },
    #[error("{tool} from the bundle does not run (`{command} --version`: {message})")]
    DoesNotRun {
        tool: &'static str,
        command: String,
        message: String,
    },
}

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

/// Where Debian puts the dynamic loader and the libraries of `arch`, inside a bundle
/// (the bundle's packages are the host's architecture).
fn loader_paths(arch: crate::platform::Arch) -> (&'static str, &'static str) {
    match arch {
        crate::platform::Arch::Amd64 => {
            ("usr/lib64/ld-linux-x86-64.so.2", "usr/lib/x86_64-linux-gnu")
        }
        crate::platform::Arch::Arm64 => {
            ("usr/lib/ld-linux-aarch64.so.1", "usr/lib/aarch64-linux-gnu")
        }
    }
}

impl Bundle {
    /// The bundle's folder under the cache.
    pub fn dir(&self, paths: &Paths) -> PathBuf {
        paths.host_tools_dir().join(self.name)
    }

    fn tool_in(&self, dir: &Path) -> HostTool {
        let (loader, library_path) = loader_paths(crate::platform::Arch::host());
        HostTool {
            loader: Some(dir.join(loader)),
            library_path: Some(dir.join(library_path)),
            binary: dir.join(self.binary),
        }
    }

    /// The environment variable's binary, the bundle `rmachine setup` installed, the
    /// bundle installed with rmachine, or the host's binary.
    pub fn find(&self, paths: &Paths) -> Option<HostTool> {
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
        if let Some(tool) = self.system(paths) {
            return Some(tool);
        }
        let host = PathBuf::from(self.host_binary);
        host.is_file().then(|| HostTool::direct(host))
    }

    /// The bundle installed with rmachine (`<system>/host-tools/<name>`), if complete.
    pub fn system(&self, paths: &Paths) -> Option<HostTool> {
        let dir = paths.system_host_tools_dir()?.join(self.name);
        dir.join(".complete").exists().then(|| self.tool_in(&dir))
    }

    /// Installs the bundle unless it is complete: `unpack` puts the packages into the
    /// given folder (`<dir>.partial`) and returns what it unpacked ("name version" each);
    /// the tool must then answer `--version`, and the folder is renamed into place and
    /// marked complete with the version. `detail` hears the version.
    pub fn install(
        &self,
        paths: &Paths,
        unpack: impl FnOnce(&Path, &[&str]) -> Result<Vec<String>, String>,
        detail: &mut dyn FnMut(&str),
    ) -> Result<HostTool, HostToolError> {
        let io = |what, path: &Path| {
            let path = path.to_path_buf();
            move |source| HostToolError::Io { what, path, source }
        };
        let dir = self.dir(paths);
        if dir.join(".complete").exists() {
            return Ok(self.tool_in(&dir));
        }
        let partial = dir.with_extension("partial");
        let _ = std::fs::remove_dir_all(&partial);
        std::fs::create_dir_all(&partial).map_err(io("cannot create", &partial))?;
        let unpacked =
            unpack(&partial, self.packages).map_err(|message| HostToolError::Unpack {
                tool: self.name,
                message,
            })?;
        // A failed start (missing library, wrong loader) fails here. passt prints its version
        // only to a terminal (it exits without flushing a piped stdout), so the package's
        // version stands in when the tool printed nothing.
        let mut check = self.tool_in(&partial).command();
        check.arg("--version");
        let does_not_run = |message: String| HostToolError::DoesNotRun {
            tool: self.name,
            command: self.tool_in(&partial).binary.display().to_string(),
            message,
        };
        let out = check.output().map_err(|e| does_not_run(e.to_string()))?;
        if !out.status.success() {
            return Err(does_not_run(format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        let printed = String::from_utf8_lossy(&out.stdout).into_owned();
        let version = match printed.lines().map(str::trim).find(|l| !l.is_empty()) {
            Some(line) => line.to_string(),
            None => unpacked.first().cloned().unwrap_or_default(),
        };
        detail(&version);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::rename(&partial, &dir).map_err(io("cannot install", &dir))?;
        std::fs::write(dir.join(".complete"), version).map_err(io("cannot write", &dir))?;
        Ok(self.tool_in(&dir))
    }
}

/// The virtiofsd to use: `RMACHINE_VIRTIOFSD`, the bundle `rmachine setup` installed, or
/// the host's own `/usr/libexec/virtiofsd`.
pub fn find_virtiofsd(paths: &Paths) -> Option<HostTool> {
    VIRTIOFSD.find(paths)
}

/// The passt to use: `RMACHINE_PASST`, the bundle `rmachine setup` installed, or the
/// host's own `/usr/bin/passt`.
pub fn find_passt(paths: &Paths) -> Option<HostTool> {
    PASST.find(paths)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FAKE: Bundle = Bundle {
        name: "fake",
        packages: &["fake"],
        binary: "usr/bin/fake",
        env_var: "RMACHINE_TEST_FAKE_TOOL_UNSET",
        host_binary: "/nonexistent/fake",
    };

    #[test]
    fn test_complete_bundle_runs_through_its_own_loader() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::with_roots(dir.path().join("home"), dir.path().join("cache"));
        assert_eq!(FAKE.find(&paths), None);
        let bundle = paths.host_tools_dir().join("fake");
        std::fs::create_dir_all(&bundle).unwrap();
        assert_eq!(FAKE.find(&paths), None, "an unfinished bundle is not used");
        std::fs::write(bundle.join(".complete"), "fake 1.0").unwrap();
        let tool = FAKE.find(&paths).unwrap();
        let cmd = tool.command();
        let (loader, libs) = loader_paths(crate::platform::Arch::host());
        assert_eq!(cmd.get_program(), bundle.join(loader));
        let args: Vec<_> = cmd.get_args().collect();
        assert_eq!(
            args,
            [
                std::ffi::OsStr::new("--library-path"),
                bundle.join(libs).as_os_str(),
                bundle.join("usr/bin/fake").as_os_str()
            ]
        );
        assert_eq!(
            loader_paths(crate::platform::Arch::Amd64),
            ("usr/lib64/ld-linux-x86-64.so.2", "usr/lib/x86_64-linux-gnu")
        );
        assert_eq!(
            loader_paths(crate::platform::Arch::Arm64),
            ("usr/lib/ld-linux-aarch64.so.1", "usr/lib/aarch64-linux-gnu")
        );
    }

    #[test]
    fn test_system_bundle_is_found_after_the_users() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::with_roots(dir.path().join("home"), dir.path().join("cache"))
            .with_system_dir(Some(dir.path().join("system")));
        let system = dir.path().join("system/host-tools/fake");
        std::fs::create_dir_all(&system).unwrap();
        assert_eq!(FAKE.find(&paths), None, "an unfinished bundle is not used");
        std::fs::write(system.join(".complete"), "fake 1.0").unwrap();
        assert_eq!(
            FAKE.find(&paths).unwrap().binary,
            system.join("usr/bin/fake")
        );
        assert_eq!(FAKE.system(&paths), FAKE.find(&paths));
        let user = paths.host_tools_dir().join("fake");
        std::fs::create_dir_all(&user).unwrap();
        std::fs::write(user.join(".complete"), "fake 1.1").unwrap();
        assert_eq!(FAKE.find(&paths).unwrap().binary, user.join("usr/bin/fake"));
    }

    #[test]
    fn test_install_that_cannot_unpack_or_run_leaves_no_bundle() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::with_roots(dir.path().join("home"), dir.path().join("cache"));
        let err = FAKE
            .install(&paths, |_, _| Err("mirror unreachable".into()), &mut |_| {})
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("fake") && err.contains("mirror unreachable"),
            "{err}"
        );
        // Unpacked, but nothing runs: refused, and nothing is marked complete.
        let err = FAKE
            .install(
                &paths,
                |_, pkgs| Ok(vec![format!("{} 1.0", pkgs[0])]),
                &mut |_| {},
            )
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not run"), "{err}");
        assert_eq!(FAKE.find(&paths), None);
    }
}
