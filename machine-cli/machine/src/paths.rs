//! Every path rmachine uses on the host. Nothing else builds them.
//!
//! - `RMACHINE_HOME` (default `$XDG_DATA_HOME/rmachine`, else `~/.local/share/rmachine`):
//!   `machines/<name>/…` and `images/<version>/…`.
//! - `RMACHINE_CACHE` (default `$XDG_CACHE_HOME/rmachine`, else `~/.cache/rmachine`):
//!   the bundled host daemons (`host-tools/`) and the image builder's caches (kernel tree,
//!   root filesystem bases, trixie package lists: their layout is the builder's own, see
//!   `rmachine_image::BuildDirs`), keyed by content hash.

use std::path::{Path, PathBuf};

/// The roots every other path hangs from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    home: PathBuf,
    cache: PathBuf,
}

/// Why the roots could not be found.
#[derive(Debug, thiserror::Error)]
pub enum PathsError {
    #[error("cannot find a home directory: set HOME, or RMACHINE_HOME and RMACHINE_CACHE")]
    NoHome,
}

impl Paths {
    /// Roots from the environment (`RMACHINE_HOME`, `RMACHINE_CACHE`, XDG, `HOME`).
    pub fn from_env() -> Result<Paths, PathsError> {
        let var = |name: &str| {
            std::env::var_os(name)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        let user_home = var("HOME");
        let home = var("RMACHINE_HOME")
            .or_else(|| var("XDG_DATA_HOME").map(|d| d.join("rmachine")))
            .or_else(|| user_home.as_ref().map(|h| h.join(".local/share/rmachine")))
            .ok_or(PathsError::NoHome)?;
        let cache = var("RMACHINE_CACHE")
            .or_else(|| var("XDG_CACHE_HOME").map(|d| d.join("rmachine")))
            .or_else(|| user_home.as_ref().map(|h| h.join(".cache/rmachine")))
            .ok_or(PathsError::NoHome)?;
        Ok(Paths { home, cache })
    }

    /// Roots given explicitly (tests).
    pub fn with_roots(home: impl Into<PathBuf>, cache: impl Into<PathBuf>) -> Paths {
        Paths {
            home: home.into(),
            cache: cache.into(),
        }
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
        MachinePaths {
            dir: self.machine_dir(name),
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
    /// The Engine API for the docker CLI.
    pub fn docker_socket(&self) -> PathBuf {
        self.dir.join("docker.sock")
    }
    /// The host agent's control socket.
    pub fn hostagent_socket(&self) -> PathBuf {
        self.dir.join("hostagent.sock")
    }
    /// rmachine-vmm's control API.
    pub fn vmm_socket(&self) -> PathBuf {
        self.dir.join("vmm.sock")
    }
    /// rmachine-vmm's hybrid vsock socket.
    pub fn vsock_socket(&self) -> PathBuf {
        self.dir.join("vsock.sock")
    }
    /// QEMU's QMP socket.
    pub fn qmp_socket(&self) -> PathBuf {
        self.dir.join("qmp.sock")
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
        assert_eq!(
            p.machine("m").docker_socket(),
            PathBuf::from("/h/machines/m/docker.sock")
        );
        assert_eq!(p.defaults_file(), PathBuf::from("/h/defaults.toml"));
    }
}
