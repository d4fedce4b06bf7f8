//! The guest image's manifest (`images/<version>/manifest.json`): what an image folder
//! holds, with sha256 sums that a machine start verifies, and the protocol version of the
//! agent inside. Written by the image builder (`guest/image`), read by the host
//! (`rmachine_machine::image_store`).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// File names inside an image folder.
pub mod files {
    /// The kernel (`bzImage` on x86_64).
    pub const KERNEL: &str = "bzImage";
    /// The read-only root filesystem.
    pub const ROOTFS: &str = "rootfs.erofs";
    pub const MANIFEST: &str = "manifest.json";
}

/// The base kernel command line of an image; drivers append their devices and the
/// reboot method.
pub const KERNEL_CMDLINE: &str =
    "console=ttyS0 root=/dev/vda ro rootfstype=erofs init=/sbin/rmachine-agent \
panic=-1 quiet loglevel=4 random.trust_cpu=on initcall_blacklist=cmos_init,early_resume_init";

/// One file of an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Artifact {
    /// File name inside the image folder.
    pub file: String,
    pub sha256: String,
    pub size_bytes: u64,
}

/// The manifest of an installed image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub version: String,
    /// Agent protocol version of the image.
    pub protocol: u32,
    pub kernel: Artifact,
    pub rootfs: Artifact,
    pub kernel_source: String,
    pub kernel_config_sha256: String,
    pub agent_sha256: String,
    pub kernel_cmdline: String,
}

/// Why a manifest is not usable.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot read {0}")]
    Read(PathBuf, #[source] std::io::Error),
    #[error("manifest {0} is invalid")]
    Parse(PathBuf, #[source] serde_json::Error),
    #[error("cannot write {0}")]
    Write(PathBuf, #[source] std::io::Error),
    #[error("{file} of image {version} is damaged: sha256 {actual}, manifest says {expected}")]
    Checksum {
        version: String,
        file: String,
        expected: String,
        actual: String,
    },
    #[error("image {version} speaks agent protocol {image}, this rmachine speaks {host}: rebuild it with `rmachine image build`")]
    Protocol {
        version: String,
        image: u32,
        host: u32,
    },
}

impl Manifest {
    /// Reads `dir/manifest.json`.
    pub fn read(dir: &Path) -> Result<Manifest, ManifestError> {
        let path = dir.join(files::MANIFEST);
        let text =
            std::fs::read_to_string(&path).map_err(|e| ManifestError::Read(path.clone(), e))?;
        serde_json::from_str(&text).map_err(|e| ManifestError::Parse(path, e))
    }

    /// Writes `dir/manifest.json`.
    pub fn write(&self, dir: &Path) -> Result<(), ManifestError> {
        let path = dir.join(files::MANIFEST);
        let text = serde_json::to_string_pretty(self).expect("manifest always serializes");
        std::fs::write(&path, text + "\n").map_err(|e| ManifestError::Write(path, e))
    }

    /// Refuses an image whose agent speaks another protocol than this build.
    pub fn check_protocol(&self) -> Result<(), ManifestError> {
        if self.protocol != crate::PROTOCOL_VERSION {
            return Err(ManifestError::Protocol {
                version: self.version.clone(),
                image: self.protocol,
                host: crate::PROTOCOL_VERSION,
            });
        }
        Ok(())
    }

    /// The files whose checksums the manifest holds.
    pub fn artifacts(&self) -> [&Artifact; 2] {
        [&self.kernel, &self.rootfs]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> Manifest {
        let artifact = |file: &str| Artifact {
            file: file.into(),
            sha256: "00".into(),
            size_bytes: 1,
        };
        Manifest {
            version: "0.1.0-abc".into(),
            protocol: crate::PROTOCOL_VERSION,
            kernel: artifact(files::KERNEL),
            rootfs: artifact(files::ROOTFS),
            kernel_source: "linux-source-6.12 6.12.1-1".into(),
            kernel_config_sha256: "c".into(),
            agent_sha256: "a".into(),
            kernel_cmdline: KERNEL_CMDLINE.into(),
        }
    }

    #[test]
    fn test_manifest_round_trip_and_protocol_check() {
        let dir = std::env::temp_dir().join(format!("rmachine-manifest-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut m = manifest();
        m.write(&dir).unwrap();
        assert_eq!(Manifest::read(&dir).unwrap(), m);
        m.check_protocol().unwrap();
        m.protocol += 1;
        let err = m.check_protocol().unwrap_err().to_string();
        assert!(err.contains("protocol"), "{err}");
        std::fs::write(dir.join(files::MANIFEST), "{ not json").unwrap();
        assert!(matches!(
            Manifest::read(&dir),
            Err(ManifestError::Parse(..))
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
