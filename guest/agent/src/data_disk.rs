//! The data disk: an ext4 filesystem (made on first boot) mounted at /mnt/data, whose
//! directories are bound over the engine's state directories of the read-only image.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::time::Instant;

use nix::mount::MsFlags;
use tracing::info;

use crate::mounts::{self, MountError};
use crate::reaper::{self, Reaper, ReaperError};

/// Where the data disk is mounted.
pub const MOUNT_POINT: &str = "/mnt/data";

/// Directories of the data disk and where each is bound.
pub const BINDS: [(&str, &str); 3] = [
    ("docker", "/var/lib/docker"),
    ("containerd", "/var/lib/containerd"),
    ("log", "/var/log"),
];

/// Filesystem label given on first boot.
const LABEL: &str = "rmachine-data";

/// The ext4 superblock starts at byte 1024; its magic is at offset 56 in it.
const EXT4_MAGIC_OFFSET: u64 = 1024 + 56;
const EXT4_MAGIC: u16 = 0xEF53;

#[derive(Debug, thiserror::Error)]
pub enum DataDiskError {
    #[error("data disk {0} not found")]
    Missing(String),
    #[error("cannot read data disk {device}")]
    Read {
        device: String,
        #[source]
        source: std::io::Error,
    },
    #[error("refusing to use {device} as the data disk: it is the {role}")]
    Reserved { device: String, role: &'static str },
    #[error("cannot format data disk {device}")]
    Format {
        device: String,
        #[source]
        source: ReaperError,
    },
    #[error("cannot create {path} on the data disk")]
    CreateDir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Mount(#[from] MountError),
    #[error("data disk mount task ended: {0}")]
    Task(String),
}

/// Whether the device (or file) holds an ext4 (or ext2/3) superblock. Too short to have
/// one is `false`.
pub fn has_ext4_superblock(path: &Path) -> std::io::Result<bool> {
    let mut file = File::open(path)?;
    file.seek(SeekFrom::Start(EXT4_MAGIC_OFFSET))?;
    let mut magic = [0u8; 2];
    match file.read_exact(&mut magic) {
        Ok(()) => Ok(u16::from_le_bytes(magic) == EXT4_MAGIC),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e),
    }
}

/// The root device named on the kernel command line (`root=/dev/vda`), if any.
pub fn root_device(cmdline: &str) -> Option<&str> {
    cmdline
        .split_whitespace()
        .find_map(|arg| arg.strip_prefix("root="))
}

/// Formats the disk if it has no filesystem, mounts it and binds its directories.
/// `reserved` lists devices that must never be formatted, with what they are.
pub async fn prepare(
    reaper: &Reaper,
    device: &str,
    reserved: &[(String, &'static str)],
) -> Result<(), DataDiskError> {
    if let Some((_, role)) = reserved.iter().find(|(d, _)| d == device) {
        return Err(DataDiskError::Reserved {
            device: device.to_string(),
            role,
        });
    }
    if !Path::new(device).exists() {
        return Err(DataDiskError::Missing(device.to_string()));
    }
    let is_ext4 = has_ext4_superblock(Path::new(device)).map_err(|source| DataDiskError::Read {
        device: device.to_string(),
        source,
    })?;
    if !is_ext4 {
        let started = Instant::now();
        info!(device, "data disk has no filesystem; formatting it ext4");
        let mut mkfs = reaper::command("mkfs.ext4");
        mkfs.args([
            "-q",
            "-F",
            "-L",
            LABEL,
            "-E",
            "lazy_itable_init=1,lazy_journal_init=1",
            device,
        ]);
        reaper
            .run_checked(&mut mkfs)
            .await
            .map_err(|source| DataDiskError::Format {
                device: device.to_string(),
                source,
            })?;
        info!(
            device,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "data disk formatted"
        );
    }
    let started = Instant::now();
    let device_owned = device.to_string();
    // Mounting replays the journal after an unclean stop: keep it off the async threads.
    tokio::task::spawn_blocking(move || mount_and_bind(&device_owned))
        .await
        .map_err(|e| DataDiskError::Task(e.to_string()))??;
    info!(
        device,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "data disk mounted on {MOUNT_POINT}"
    );
    Ok(())
}

fn mount_and_bind(device: &str) -> Result<(), DataDiskError> {
    mounts::mount_fs(device, MOUNT_POINT, "ext4", MsFlags::MS_NOATIME)?;
    for (dir, target) in BINDS {
        let source = format!("{MOUNT_POINT}/{dir}");
        std::fs::create_dir_all(&source).map_err(|e| DataDiskError::CreateDir {
            path: source.clone(),
            source: e,
        })?;
        mounts::bind(&source, target)?;
    }
    Ok(())
}

/// Unmounts the binds, everything mounted below them (container filesystems, network
/// namespaces) and the data disk.
pub fn unmount() {
    let mut prefixes: Vec<&str> = BINDS.iter().map(|(_, target)| *target).collect();
    prefixes.extend(["/run/docker", "/run/containerd", "/run/netns", MOUNT_POINT]);
    mounts::unmount_under(&prefixes);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn test_ext4_magic_detection() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.img");
        let mut image = vec![0u8; 4096];
        std::fs::write(&path, &image).unwrap();
        assert!(!has_ext4_superblock(&path).unwrap());
        image[1080] = 0x53;
        image[1081] = 0xEF;
        std::fs::write(&path, &image).unwrap();
        assert!(has_ext4_superblock(&path).unwrap());
        // Big-endian bytes are not the magic.
        image[1080] = 0xEF;
        image[1081] = 0x53;
        std::fs::write(&path, &image).unwrap();
        assert!(!has_ext4_superblock(&path).unwrap());
        // Too short to hold a superblock.
        let mut short = File::create(&path).unwrap();
        short.write_all(&[0u8; 1081]).unwrap();
        assert!(!has_ext4_superblock(&path).unwrap());
        assert!(has_ext4_superblock(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn test_root_device_from_cmdline() {
        let cmdline = "console=ttyS0 root=/dev/vda ro rootfstype=erofs init=/sbin/rmachine-agent\n";
        assert_eq!(root_device(cmdline), Some("/dev/vda"));
        assert_eq!(root_device("console=ttyS0"), None);
    }

    #[tokio::test]
    async fn test_prepare_refuses_reserved_and_missing_devices() {
        let reaper = Reaper::default();
        let reserved = vec![("/dev/vda".to_string(), "root disk")];
        let err = prepare(&reaper, "/dev/vda", &reserved).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "refusing to use /dev/vda as the data disk: it is the root disk"
        );
        let err = prepare(&reaper, "/nonexistent/vdz", &reserved)
            .await
            .unwrap_err();
        assert!(matches!(err, DataDiskError::Missing(_)), "{err}");
    }
}
