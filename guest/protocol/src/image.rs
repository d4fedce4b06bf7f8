//! The guest image's manifest (`images/<version>/manifest.json`): what an image folder
//! holds, with sha256 sums that a machine start verifies, and the protocol version of the
//! agent inside. Written by the image builder (`guest/image`), read by the host
//! (`rmachine_machine::image_store`). Images exist per guest architecture ([`Arch`]).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// File names inside an image folder.
pub mod files {
    use super::Arch;

    /// The amd64 kernel (x86's self-decompressing `bzImage`).
    pub const KERNEL: &str = "bzImage";
    /// The arm64 kernel (the uncompressed `Image`: arm64 has no self-decompressing kernel).
    pub const KERNEL_ARM64: &str = "Image";
    /// The read-only root filesystem.
    pub const ROOTFS: &str = "rootfs.erofs";
    pub const MANIFEST: &str = "manifest.json";

    /// The kernel's file name for `arch`.
    pub fn kernel(arch: Arch) -> &'static str {
        match arch {
            Arch::Amd64 => KERNEL,
            Arch::Arm64 => KERNEL_ARM64,
        }
    }
}

/// The base kernel command line of an amd64 image; drivers append their devices and the
/// reboot method.
pub const KERNEL_CMDLINE: &str =
    "console=ttyS0 root=/dev/vda ro rootfstype=erofs init=/sbin/rmachine-agent \
panic=-1 quiet loglevel=4 random.trust_cpu=on initcall_blacklist=cmos_init,early_resume_init";

/// The base kernel command line of an arm64 image: the PL011 console, and none of x86's
/// CMOS initcalls to skip (arm64 resets through PSCI, so drivers append no reboot method).
pub const KERNEL_CMDLINE_ARM64: &str =
    "console=ttyAMA0 root=/dev/vda ro rootfstype=erofs init=/sbin/rmachine-agent \
panic=-1 quiet loglevel=4 random.trust_cpu=on";

/// The base kernel command line of an image of `arch`.
pub fn kernel_cmdline(arch: Arch) -> &'static str {
    match arch {
        Arch::Amd64 => KERNEL_CMDLINE,
        Arch::Arm64 => KERNEL_CMDLINE_ARM64,
    }
}

/// A guest architecture, by its Debian name (the name images, `--arch` and `machine.toml`
/// use).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    /// x86_64.
    Amd64,
    /// aarch64 (Apple Silicon, ARM servers).
    Arm64,
}

impl Arch {
    pub const ALL: [Arch; 2] = [Arch::Amd64, Arch::Arm64];
    /// The names `--arch` and `config set arch` take.
    pub const NAMES: &'static str = "amd64 or arm64";

    /// The Debian name (`amd64`, `arm64`).
    pub fn as_str(self) -> &'static str {
        match self {
            Arch::Amd64 => "amd64",
            Arch::Arm64 => "arm64",
        }
    }

    /// Parses a Debian name, or the kernel's (`x86_64`, `aarch64`).
    pub fn parse(name: &str) -> Result<Arch, String> {
        match name {
            "amd64" | "x86_64" => Ok(Arch::Amd64),
            "arm64" | "aarch64" => Ok(Arch::Arm64),
            other => Err(format!(
                "unknown architecture {other:?}: use {}",
                Arch::NAMES
            )),
        }
    }

    /// The architecture of a Rust target's `target_arch` (`std::env::consts::ARCH`), if
    /// guests of it exist.
    pub fn from_target_arch(target_arch: &str) -> Option<Arch> {
        match target_arch {
            "x86_64" => Some(Arch::Amd64),
            "aarch64" => Some(Arch::Arm64),
            _ => None,
        }
    }

    /// The host's architecture; amd64 on a host whose architecture has no guest image (it
    /// then runs amd64 guests under emulation).
    pub fn host() -> Arch {
        Arch::from_target_arch(std::env::consts::ARCH).unwrap_or(Arch::Amd64)
    }

    /// The kernel's and Rust's name (`x86_64`, `aarch64`).
    pub fn kernel_name(self) -> &'static str {
        match self {
            Arch::Amd64 => "x86_64",
            Arch::Arm64 => "aarch64",
        }
    }

    /// The Rust target the static guest agent is built for.
    pub fn agent_target(self) -> &'static str {
        match self {
            Arch::Amd64 => "x86_64-unknown-linux-musl",
            Arch::Arm64 => "aarch64-unknown-linux-musl",
        }
    }

    /// The ELF `e_machine` of this architecture's executables.
    pub fn elf_machine(self) -> u16 {
        match self {
            Arch::Amd64 => 62,  // EM_X86_64
            Arch::Arm64 => 183, // EM_AARCH64
        }
    }
}

impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // pad: tables give it a width.
        f.pad(self.as_str())
    }
}

/// Manifests written before images had an architecture are amd64 ones.
fn manifest_default_arch() -> Arch {
    Arch::Amd64
}

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
    /// The guest architecture (absent in manifests written before arm64 images: amd64).
    #[serde(default = "manifest_default_arch")]
    pub arch: Arch,
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
    #[error("image {version} speaks agent protocol {image}, this rmachine speaks {host}")]
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
            arch: Arch::Amd64,
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

    #[test]
    fn test_manifest_without_arch_reads_as_amd64() {
        let mut value = serde_json::to_value(manifest()).unwrap();
        value.as_object_mut().unwrap().remove("arch");
        let old: Manifest = serde_json::from_value(value).unwrap();
        assert_eq!(old.arch, Arch::Amd64);
        let mut arm = manifest();
        arm.arch = Arch::Arm64;
        let text = serde_json::to_string(&arm).unwrap();
        assert!(text.contains(r#""arch":"arm64""#), "{text}");
        assert_eq!(serde_json::from_str::<Manifest>(&text).unwrap(), arm);
    }

    #[test]
    fn test_arch_names() {
        for arch in Arch::ALL {
            assert_eq!(Arch::parse(arch.as_str()), Ok(arch));
            assert_eq!(Arch::parse(arch.kernel_name()), Ok(arch));
            assert_eq!(Arch::from_target_arch(arch.kernel_name()), Some(arch));
            assert!(arch.agent_target().starts_with(arch.kernel_name()));
        }
        let err = Arch::parse("riscv64").unwrap_err();
        assert!(
            err.contains("riscv64") && err.contains("amd64 or arm64"),
            "{err}"
        );
        assert_eq!(Arch::from_target_arch("riscv64"), None);
        assert_eq!(files::kernel(Arch::Arm64), "Image");
        assert!(kernel_cmdline(Arch::Arm64).contains("console=ttyAMA0"));
        assert!(!kernel_cmdline(Arch::Arm64).contains("initcall_blacklist"));
        assert!(kernel_cmdline(Arch::Amd64).contains("console=ttyS0"));
    }
}
