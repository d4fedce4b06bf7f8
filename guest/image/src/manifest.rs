//! `images/<version>/manifest.json`: what an image folder holds, with sha256 sums that a
//! machine start verifies, and the protocol version of the agent inside.

use std::path::{Path, PathBuf};

use rmachine_machine::paths::image_files;
use serde::{Deserialize, Serialize};

/// The base kernel command line of this image; drivers append their devices and the
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

/// Why a manifest or image folder is not usable.
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

impl Artifact {
    /// Describes a file by its name, size and sha256.
    pub fn describe(path: &Path) -> Result<Artifact, crate::ImageError> {
        let size_bytes = std::fs::metadata(path)
            .map_err(crate::ImageError::io("cannot stat", path))?
            .len();
        Ok(Artifact {
            file: path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            sha256: crate::sha256_file(path)?,
            size_bytes,
        })
    }
}

impl Manifest {
    pub fn read(dir: &Path) -> Result<Manifest, ManifestError> {
        let path = dir.join(image_files::MANIFEST);
        let text =
            std::fs::read_to_string(&path).map_err(|e| ManifestError::Read(path.clone(), e))?;
        serde_json::from_str(&text).map_err(|e| ManifestError::Parse(path, e))
    }

    pub fn write(&self, dir: &Path) -> Result<(), ManifestError> {
        let path = dir.join(image_files::MANIFEST);
        let text = serde_json::to_string_pretty(self).expect("manifest always serializes");
        std::fs::write(&path, text + "\n").map_err(|e| ManifestError::Write(path, e))
    }

    /// Checks the protocol version and each file's sha256.
    pub fn verify(&self, dir: &Path) -> Result<(), crate::ImageError> {
        if self.protocol != rmachine_protocol::PROTOCOL_VERSION {
            return Err(ManifestError::Protocol {
                version: self.version.clone(),
                image: self.protocol,
                host: rmachine_protocol::PROTOCOL_VERSION,
            }
            .into());
        }
        for artifact in [&self.kernel, &self.rootfs] {
            let actual = crate::sha256_file(&dir.join(&artifact.file))?;
            if actual != artifact.sha256 {
                return Err(ManifestError::Checksum {
                    version: self.version.clone(),
                    file: artifact.file.clone(),
                    expected: artifact.sha256.clone(),
                    actual,
                }
                .into());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_image(dir: &Path) -> Manifest {
        std::fs::write(dir.join("bzImage"), b"kernel").unwrap();
        std::fs::write(dir.join("rootfs.erofs"), b"rootfs").unwrap();
        let m = Manifest {
            version: "0.1.0-abc".into(),
            protocol: rmachine_protocol::PROTOCOL_VERSION,
            kernel: Artifact::describe(&dir.join("bzImage")).unwrap(),
            rootfs: Artifact::describe(&dir.join("rootfs.erofs")).unwrap(),
            kernel_source: "linux-source-6.12 6.12.1-1".into(),
            kernel_config_sha256: "c".into(),
            agent_sha256: "a".into(),
            kernel_cmdline: KERNEL_CMDLINE.into(),
        };
        m.write(dir).unwrap();
        m
    }

    #[test]
    fn test_manifest_round_trip_and_verify() {
        let dir = tempfile::tempdir().unwrap();
        let m = fake_image(dir.path());
        assert_eq!(Manifest::read(dir.path()).unwrap(), m);
        m.verify(dir.path()).unwrap();
        assert_eq!(m.kernel.size_bytes, 6);
    }

    #[test]
    fn test_damaged_file_and_other_protocol_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = fake_image(dir.path());
        std::fs::write(dir.path().join("rootfs.erofs"), b"tampered").unwrap();
        let err = m.verify(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("rootfs.erofs") && err.contains("damaged"),
            "{err}"
        );
        m.protocol += 1;
        let err = m.verify(dir.path()).unwrap_err().to_string();
        assert!(err.contains("protocol"), "{err}");
    }

    #[test]
    fn test_corrupt_manifest_is_a_parse_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("manifest.json"), "{ not json").unwrap();
        assert!(matches!(
            Manifest::read(dir.path()),
            Err(ManifestError::Parse(..))
        ));
    }
}
