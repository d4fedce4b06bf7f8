//! Where the builder keeps its caches and installs images. The host names the two roots
//! (`rmachine_machine::paths`: the cache root and `images/`); the layout under the cache
//! root is the builder's own.

use std::path::{Path, PathBuf};

/// The builder's folders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildDirs {
    cache: PathBuf,
    images: PathBuf,
}

impl BuildDirs {
    /// `cache`: the build caches' root; `images`: where finished images go, one folder per
    /// version.
    pub fn new(cache: impl Into<PathBuf>, images: impl Into<PathBuf>) -> BuildDirs {
        BuildDirs {
            cache: cache.into(),
            images: images.into(),
        }
    }

    pub fn cache(&self) -> &Path {
        &self.cache
    }

    /// `images/<version>/`.
    pub fn image_dir(&self, version: &str) -> PathBuf {
        self.images.join(version)
    }

    /// Build cache of the guest kernel.
    pub(crate) fn kernel_cache(&self) -> PathBuf {
        self.cache.join("kernel")
    }

    /// Build cache of the guest root filesystem.
    pub(crate) fn rootfs_cache(&self) -> PathBuf {
        self.cache.join("rootfs")
    }

    /// The separate apt configuration used to reach Debian trixie.
    pub(crate) fn apt_cache(&self) -> PathBuf {
        self.cache.join("apt-trixie")
    }

    /// Scratch space and log of host tool downloads.
    pub(crate) fn host_tools_scratch(&self) -> PathBuf {
        self.cache.join("host-tools")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_dirs_hang_from_their_roots() {
        let d = BuildDirs::new("/c", "/h/images");
        assert_eq!(d.image_dir("1.0-abc"), PathBuf::from("/h/images/1.0-abc"));
        assert_eq!(d.kernel_cache(), PathBuf::from("/c/kernel"));
        assert_eq!(d.apt_cache(), PathBuf::from("/c/apt-trixie"));
    }
}
