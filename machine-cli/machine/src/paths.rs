//! Every path rmachine uses on the host. Nothing else builds them.
//!
//! - `RMACHINE_HOME`: `machines/<name>/…` and `images/<version>/…`. Default: the user's
//!   local data folder + `rmachine` (Linux `$XDG_DATA_HOME` or `~/.local/share`, macOS
//!   `~/Library/Application Support`, Windows `%LOCALAPPDATA%`).
//! - `RMACHINE_CACHE` (default: the user's cache folder + `rmachine`: Linux
//!   `$XDG_CACHE_HOME` or `~/.cache`, macOS `~/Library/Caches`, Windows
//!   `%LOCALAPPDATA%\rmachine\cache`):
//!   the bundled host daemons (`host-tools/`) and the image builder's caches (kernel tree,
//!   root filesystem bases, trixie package lists: their layout is the builder's own, see
//!   `rmachine_image::BuildDirs`), keyed by content hash.
//! - The system folder (`RMACHINE_SYSTEM_DIR`; default: the install's own, found from the
//!   executable, see [`crate::sys::install_dir`]: `/usr/lib/rmachine` for the .deb):
//!   read-only files installed with rmachine, `images/<version>/` and `host-tools/<name>/`.
//!   Looked in after the user's own folders; rmachine never writes there.

use std::path::{Path, PathBuf};

use sha2::Digest;

use crate::sys::local_socket::Endpoint;

/// The roots every other path hangs from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    home: PathBuf,
    cache: PathBuf,
    /// Read-only files installed with rmachine (guest images, host tools), if any.
    system: Option<PathBuf>,
    /// Set when `home` is not the user's default: named pipes (global on Windows) then
    /// carry it, so two homes never share a pipe name.
    pipe_tag: Option<String>,
}

/// Why the roots could not be found.
#[derive(Debug, thiserror::Error)]
pub enum PathsError {
    #[error("cannot find a home directory: set HOME, or RMACHINE_HOME and RMACHINE_CACHE")]
    NoHome,
}

impl Paths {
    /// Roots from the environment: `RMACHINE_HOME`, `RMACHINE_CACHE`, else the user's
    /// folders (XDG and `HOME` on Linux).
    pub fn from_env() -> Result<Paths, PathsError> {
        let var = |name: &str| {
            std::env::var_os(name)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        let default_home = dirs::data_local_dir().map(|d| d.join("rmachine"));
        let home = var("RMACHINE_HOME")
            .or_else(|| default_home.clone())
            .ok_or(PathsError::NoHome)?;
        let cache = match var("RMACHINE_CACHE") {
            Some(c) => c,
            None => {
                let cache = dirs::cache_dir()
                    .map(|d| d.join("rmachine"))
                    .ok_or(PathsError::NoHome)?;
                // Windows has one local folder for both: the cache gets its own corner.
                if Some(&cache) == default_home.as_ref() {
                    cache.join("cache")
                } else {
                    cache
                }
            }
        };
        // Set but empty: no system folder.
        let system = match std::env::var_os("RMACHINE_SYSTEM_DIR") {
            Some(dir) if dir.is_empty() => None,
            Some(dir) => Some(PathBuf::from(dir)),
            None => crate::sys::install_dir::system_dir(),
        };
        let mut paths = Paths::with_roots(home, cache).with_system_dir(system);
        if Some(&paths.home) == default_home.as_ref() {
            paths.pipe_tag = None;
        }
        Ok(paths)
    }

    /// Roots given explicitly (tests), without a system folder.
    pub fn with_roots(home: impl Into<PathBuf>, cache: impl Into<PathBuf>) -> Paths {
        let home = home.into();
        let digest = sha2::Sha256::digest(home.to_string_lossy().as_bytes());
        Paths {
            pipe_tag: Some(hex::encode(&digest[..4])),
            home,
            cache: cache.into(),
            system: None,
        }
    }

    /// The same roots with this system folder (or none).
    pub fn with_system_dir(mut self, system: Option<PathBuf>) -> Paths {
        self.system = system;
        self
    }

    pub fn home(&self) -> &Path {
        &self.home
    }

    pub fn cache(&self) -> &Path {
        &self.cache
    }

    /// `images/`: one folder per guest image version.
    pub fn images_dir(&self) -> PathBuf {
        self.home.join("images")
    }

    /// `images/<version>/`.
    pub fn image_dir(&self, version: &str) -> PathBuf {
        self.images_dir().join(version)
    }

    /// The system folder: read-only files installed with rmachine.
    pub fn system_dir(&self) -> Option<&Path> {
        self.system.as_deref()
    }

    /// Guest images installed with rmachine (`<system>/images/`), one folder per version.
    pub fn system_images_dir(&self) -> Option<PathBuf> {
        self.system.as_ref().map(|s| s.join("images"))
    }

    /// Host daemons installed with rmachine (`<system>/host-tools/`), one bundle each.
    pub fn system_host_tools_dir(&self) -> Option<PathBuf> {
        self.system.as_ref().map(|s| s.join("host-tools"))
    }

    /// `machines/`.
    pub fn machines_dir(&self) -> PathBuf {
        self.home.join("machines")
    }

    /// `machines/<name>/`.
    pub fn machine_dir(&self, name: &str) -> PathBuf {
        self.machines_dir().join(name)
    }

    /// Bundled host daemons (virtiofsd, passt) that `rmachine setup` installs.
    pub fn host_tools_dir(&self) -> PathBuf {
        self.cache.join("host-tools")
    }
}

impl Paths {
    /// The files of machine `name`.
    pub fn machine(&self, name: &str) -> MachinePaths {
        let pipe = match &self.pipe_tag {
            Some(tag) => format!("rmachine-{name}-{tag}"),
            None => format!("rmachine-{name}"),
        };
        MachinePaths {
            dir: self.machine_dir(name),
            pipe,
        }
    }

    /// Global defaults for new machines.
    pub fn defaults_file(&self) -> PathBuf {
        self.home.join("defaults.toml")
    }
}

/// The files of one machine folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachinePaths {
    dir: PathBuf,
    /// The engine's named pipe on Windows.
    pipe: String,
}

impl MachinePaths {
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    /// Settings the user may edit.
    pub fn config(&self) -> PathBuf {
        self.dir.join("machine.toml")
    }
    /// Generated state (0600: it holds the boot's token).
    pub fn state(&self) -> PathBuf {
        self.dir.join("state.json")
    }
    /// The guest's /var/lib/docker (sparse ext4, never touched by upgrades).
    pub fn data_disk(&self) -> PathBuf {
        self.dir.join("data.img")
    }
    /// The config disk written at each start.
    pub fn config_disk(&self) -> PathBuf {
        self.dir.join("config.img")
    }
    /// The Engine API for the docker CLI: `docker.sock` in the folder, or the named pipe
    /// `rmachine-NAME` on Windows.
    pub fn docker_endpoint(&self) -> Endpoint {
        Endpoint::for_machine(&self.dir, "docker.sock", self.pipe.clone())
    }
    /// The host agent's control socket (`hostagent.sock`, or the pipe
    /// `rmachine-NAME-hostagent`).
    pub fn hostagent_endpoint(&self) -> Endpoint {
        Endpoint::for_machine(
            &self.dir,
            "hostagent.sock",
            format!("{}-hostagent", self.pipe),
        )
    }
    /// rmachine-vmm's control API.
    pub fn vmm_socket(&self) -> PathBuf {
        self.dir.join("vmm.sock")
    }
    /// rmachine-vmm's hybrid vsock socket, in a folder of its own: a jailed VMM sees that
    /// folder (where guest connections to the host go, `vsock.sock_PORT`), nothing else of
    /// the machine's.
    pub fn vsock_socket(&self) -> PathBuf {
        self.vsock_dir().join("vsock.sock")
    }
    /// The folder of [`MachinePaths::vsock_socket`].
    pub fn vsock_dir(&self) -> PathBuf {
        self.dir.join("vsock")
    }
    /// The saved VM of a machine `rmachine stop` saved (see [`crate::saved_state`]).
    pub fn saved_state(&self) -> PathBuf {
        self.dir.join("saved.vmstate")
    }
    /// The saved state's header, written last (see [`crate::saved_state`]).
    pub fn saved_header(&self) -> PathBuf {
        self.dir.join("saved.json")
    }
    /// QEMU's QMP socket for commands.
    pub fn qmp_socket(&self) -> PathBuf {
        self.dir.join("qmp.sock")
    }
    /// QEMU's QMP socket the host agent holds open for its events.
    pub fn qmp_events_socket(&self) -> PathBuf {
        self.dir.join("qmp-events.sock")
    }
    /// Space the host agent holds on the machine's filesystem while it runs, and lets go
    /// of when that filesystem fills up, so `state.json` can still say so.
    pub fn space_reserve(&self) -> PathBuf {
        self.dir.join("space.reserve")
    }
    pub fn console_log(&self) -> PathBuf {
        self.dir.join("console.log")
    }
    pub fn hostagent_log(&self) -> PathBuf {
        self.dir.join("hostagent.log")
    }
    pub fn vmm_log(&self) -> PathBuf {
        self.dir.join("vmm.log")
    }
    /// virtiofsd's vhost-user socket for shared folder `index`.
    pub fn virtiofs_socket(&self, index: usize) -> PathBuf {
        self.dir.join(format!("fs{index}.sock"))
    }
    /// The virtiofsd daemons' log.
    pub fn virtiofsd_log(&self) -> PathBuf {
        self.dir.join("virtiofsd.log")
    }
    /// passt's unix socket, where rmachine-vmm's virtio-net device connects.
    pub fn passt_socket(&self) -> PathBuf {
        self.dir.join("passt.sock")
    }
    /// passt's pid file, written once it is ready.
    pub fn passt_pid(&self) -> PathBuf {
        self.dir.join("passt.pid")
    }
    /// passt's log.
    pub fn passt_log(&self) -> PathBuf {
        self.dir.join("passt.log")
    }
    /// An ssh machine's pinned host key (one OpenSSH public key line).
    pub fn ssh_host_key(&self) -> PathBuf {
        self.dir.join("ssh_host_key")
    }
    /// What the probe of an ssh machine's host found, and what rmachine changed there
    /// (generated JSON).
    pub fn remote_record(&self) -> PathBuf {
        self.dir.join("remote.json")
    }
    /// The engine's TLS client files (`ca.pem`, `cert.pem`, `key.pem`): `DOCKER_CERT_PATH`.
    pub fn engine_certs(&self) -> PathBuf {
        self.dir.join("certs")
    }
    /// The machine's own certificate authority (`ca-key.pem`, `ca.pem`): it signs the
    /// engine's server certificate; never exported.
    pub fn engine_ca(&self) -> PathBuf {
        self.dir.join("ca")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_paths_hang_from_their_roots() {
        let p = Paths::with_roots("/h", "/c");
        assert_eq!(p.image_dir("1.0-abc"), PathBuf::from("/h/images/1.0-abc"));
        assert_eq!(
            p.machine_dir("default"),
            PathBuf::from("/h/machines/default")
        );
        assert_eq!(p.host_tools_dir(), PathBuf::from("/c/host-tools"));
        assert_eq!(p.system_images_dir(), None);
        let p = p.with_system_dir(Some("/s".into()));
        assert_eq!(p.system_images_dir(), Some(PathBuf::from("/s/images")));
        assert_eq!(
            p.system_host_tools_dir(),
            Some(PathBuf::from("/s/host-tools"))
        );
        let m = p.machine("m");
        assert_eq!(
            m.docker_endpoint(),
            Endpoint::for_machine(&p.machine_dir("m"), "docker.sock", m.pipe.clone())
        );
        assert_eq!(p.defaults_file(), PathBuf::from("/h/defaults.toml"));
    }

    #[test]
    fn test_pipe_names_differ_per_home() {
        let a = Paths::with_roots("/h1", "/c").machine("dev");
        let b = Paths::with_roots("/h2", "/c").machine("dev");
        assert!(a.pipe.starts_with("rmachine-dev-"), "{}", a.pipe);
        assert_ne!(a.pipe, b.pipe);
        let mut default = Paths::with_roots("/h1", "/c");
        default.pipe_tag = None;
        assert_eq!(default.machine("dev").pipe, "rmachine-dev");
        assert_eq!(
            default.machine("dev").hostagent_endpoint(),
            Endpoint::for_machine(
                Path::new("/h1/machines/dev"),
                "hostagent.sock",
                "rmachine-dev-hostagent".into()
            )
        );
    }
}
