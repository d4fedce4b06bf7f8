//! Every path rmachine uses on the host. Nothing else builds them.
//!
//! - `RMACHINE_HOME` (default `$XDG_DATA_HOME/rmachine`, else `~/.local/share/rmachine`):
//!   `machines/<name>/…` and `images/<version>/…`.
//! - `RMACHINE_CACHE` (default `$XDG_CACHE_HOME/rmachine`, else `~/.cache/rmachine`):
//!   build caches (kernel tree, root filesystem bases, trixie package lists), keyed by
//!   content hash; safe to delete.

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
        let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
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
        Paths { home: home.into(), cache: cache.into() }
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

    /// Build cache of the guest kernel.
    pub fn kernel_cache(&self) -> PathBuf {
        self.cache.join("kernel")
    }

    /// Build cache of the guest root filesystem.
    pub fn rootfs_cache(&self) -> PathBuf {
        self.cache.join("rootfs")
    }

    /// The separate apt configuration used to reach Debian trixie.
    pub fn apt_cache(&self) -> PathBuf {
        self.cache.join("apt-trixie")
    }
}

/// Files of one image folder.
pub mod image_files {
    pub const KERNEL: &str = "bzImage";
    pub const ROOTFS: &str = "rootfs.erofs";
    pub const MANIFEST: &str = "manifest.json";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_paths_hang_from_their_roots() {
        let p = Paths::with_roots("/h", "/c");
        assert_eq!(p.image_dir("1.0-abc"), PathBuf::from("/h/images/1.0-abc"));
        assert_eq!(p.machine_dir("default"), PathBuf::from("/h/machines/default"));
        assert_eq!(p.kernel_cache(), PathBuf::from("/c/kernel"));
        assert_eq!(p.apt_cache(), PathBuf::from("/c/apt-trixie"));
    }
}
