//! Filesystems: the kernel API and tmpfs mounts PID 1 makes first, the mount table, and
//! unmounting at shutdown.

use std::path::Path;
use std::time::Instant;

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use tracing::{debug, info, warn};

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("cannot mount {fstype} on {target}")]
    Mount {
        fstype: String,
        target: String,
        #[source]
        source: Errno,
    },
    #[error("cannot bind {source_path} on {target}")]
    Bind {
        source_path: String,
        target: String,
        #[source]
        source: Errno,
    },
    #[error("cannot read the mount table")]
    Table(#[source] std::io::Error),
}

/// One of the early mounts.
struct EarlyMount {
    fstype: &'static str,
    target: &'static str,
    flags: MsFlags,
    data: Option<&'static str>,
}

fn early_mounts() -> Vec<EarlyMount> {
    let nosuid_nodev = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    let kernel_fs = nosuid_nodev | MsFlags::MS_NOEXEC;
    let m = |fstype, target, flags, data| EarlyMount {
        fstype,
        target,
        flags,
        data,
    };
    vec![
        m("proc", "/proc", kernel_fs, None),
        m("sysfs", "/sys", kernel_fs, None),
        // Usually mounted by the kernel already (CONFIG_DEVTMPFS_MOUNT).
        m("devtmpfs", "/dev", MsFlags::MS_NOSUID, Some("mode=0755")),
        m(
            "devpts",
            "/dev/pts",
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
        ),
        m("tmpfs", "/dev/shm", nosuid_nodev, Some("mode=1777")),
        m("tmpfs", "/run", nosuid_nodev, Some("mode=0755")),
        m("tmpfs", "/tmp", nosuid_nodev, Some("mode=1777")),
        m("cgroup2", "/sys/fs/cgroup", kernel_fs, None),
        m("bpf", "/sys/fs/bpf", kernel_fs, Some("mode=0700")),
    ]
}

/// Makes the early mounts. Each failure is logged and the rest go on.
pub fn mount_early() {
    let started = Instant::now();
    for m in early_mounts() {
        if m.target != "/proc" && is_mounted(m.target) {
            debug!(target = m.target, "already mounted");
            continue;
        }
        if let Err(e) = std::fs::create_dir_all(m.target) {
            debug!(target = m.target, error = %e, "cannot create mount point");
        }
        match mount(Some(m.fstype), m.target, Some(m.fstype), m.flags, m.data) {
            Ok(()) => debug!(target = m.target, fstype = m.fstype, "mounted"),
            Err(Errno::EBUSY) => debug!(target = m.target, "already mounted"),
            Err(e) => warn!(target = m.target, fstype = m.fstype, error = %e, "mount failed"),
        }
    }
    // With a private devpts instance, /dev/ptmx must lead to it.
    if std::fs::symlink_metadata("/dev/ptmx").is_err() {
        if let Err(e) = std::os::unix::fs::symlink("pts/ptmx", "/dev/ptmx") {
            warn!(error = %e, "cannot create /dev/ptmx");
        }
    }
    for dir in ["/run/rmachine", "/run/lock"] {
        if let Err(e) = std::fs::create_dir_all(dir) {
            warn!(dir, error = %e, "cannot create directory");
        }
    }
    enable_cgroup_controllers(Path::new("/sys/fs/cgroup"));
    info!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        "early mounts done"
    );
}

/// Enables every available controller for the root cgroup's children. Harmless where a
/// controller refuses (dockerd enables what it needs itself).
fn enable_cgroup_controllers(root: &Path) {
    let controllers = match std::fs::read_to_string(root.join("cgroup.controllers")) {
        Ok(text) => text,
        Err(e) => {
            warn!(error = %e, "no cgroup2 controllers");
            return;
        }
    };
    let mut enabled = Vec::new();
    for name in controllers.split_whitespace() {
        match std::fs::write(root.join("cgroup.subtree_control"), format!("+{name}")) {
            Ok(()) => enabled.push(name),
            Err(e) => debug!(controller = name, error = %e, "cannot enable cgroup controller"),
        }
    }
    debug!(controllers = %enabled.join(" "), "cgroup controllers enabled");
}

/// Decodes the octal escapes (`\040` for a space) of a mount table field.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let digit = |b: u8| u32::from(b - b'0');
            let value = digit(bytes[i + 1]) * 64 + digit(bytes[i + 2]) * 8 + digit(bytes[i + 3]);
            // The kernel escapes single bytes; anything larger is not an escape it made.
            out.push(u8::try_from(value).unwrap_or(b'?'));
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The mount points of a `/proc/self/mountinfo` text, in mount order.
pub fn mount_points(mountinfo: &str) -> Vec<String> {
    mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(unescape)
        .collect()
}

fn read_mount_points() -> Result<Vec<String>, MountError> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|text| mount_points(&text))
        .map_err(MountError::Table)
}

/// Whether something is mounted exactly at `target`.
pub fn is_mounted(target: &str) -> bool {
    read_mount_points()
        .map(|points| points.iter().any(|p| p == target))
        .unwrap_or(false)
}

/// Whether `path` is `prefix` or below it.
fn is_under(path: &str, prefix: &str) -> bool {
    path == prefix
        || path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// The mount points at or below any of `prefixes`, innermost (latest) first: the order to
/// unmount them in.
pub fn unmount_order(points: &[String], prefixes: &[&str]) -> Vec<String> {
    points
        .iter()
        .rev()
        .filter(|p| prefixes.iter().any(|prefix| is_under(p, prefix)))
        .cloned()
        .collect()
}

/// Unmounts everything at or below `prefixes`, innermost first; a busy mount is detached
/// lazily (the caller synced first, so only open files keep it alive).
pub fn unmount_under(prefixes: &[&str]) {
    let points = match read_mount_points() {
        Ok(points) => points,
        Err(e) => {
            warn!(error = %e, "cannot list mounts to unmount");
            return;
        }
    };
    for target in unmount_order(&points, prefixes) {
        match umount2(target.as_str(), MntFlags::empty()) {
            Ok(()) => debug!(%target, "unmounted"),
            Err(Errno::EBUSY) => match umount2(target.as_str(), MntFlags::MNT_DETACH) {
                Ok(()) => warn!(%target, "busy; detached lazily"),
                Err(e) => warn!(%target, error = %e, "cannot detach"),
            },
            Err(Errno::EINVAL | Errno::ENOENT) => debug!(%target, "already gone"),
            Err(e) => warn!(%target, error = %e, "cannot unmount"),
        }
    }
}

/// Mounts a filesystem, creating the mount point if needed.
pub fn mount_fs(
    source: &str,
    target: &str,
    fstype: &str,
    flags: MsFlags,
) -> Result<(), MountError> {
    let _ = std::fs::create_dir_all(target);
    mount(Some(source), target, Some(fstype), flags, None::<&str>).map_err(|source| {
        MountError::Mount {
            fstype: fstype.to_string(),
            target: target.to_string(),
            source,
        }
    })
}

/// Bind-mounts `source` on `target`.
pub fn bind(source: &str, target: &str) -> Result<(), MountError> {
    mount(
        Some(source),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| MountError::Bind {
        source_path: source.to_string(),
        target: target.to_string(),
        source: e,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 1 254:0 / / ro,relatime - erofs /dev/root ro
23 22 0:5 / /dev rw,nosuid - devtmpfs devtmpfs rw
30 22 254:16 / /mnt/data rw,noatime - ext4 /dev/vdb rw
31 22 254:16 /docker /var/lib/docker rw,noatime - ext4 /dev/vdb rw
32 22 254:16 /log /var/log rw,noatime - ext4 /dev/vdb rw
40 31 0:50 / /var/lib/docker/overlay2/abc/merged rw - overlay overlay rw
41 22 0:51 / /var/lib/dockerish rw - tmpfs tmpfs rw
42 22 0:52 / /mnt/with\\040space rw - tmpfs tmpfs rw
";

    #[test]
    fn test_mount_points_are_parsed_and_unescaped() {
        let points = mount_points(MOUNTINFO);
        assert_eq!(points.len(), 8);
        assert_eq!(points[0], "/");
        assert_eq!(points[7], "/mnt/with space");
    }

    #[test]
    fn test_unmount_order_is_innermost_first_and_respects_path_boundaries() {
        let points = mount_points(MOUNTINFO);
        let order = unmount_order(&points, &["/var/lib/docker", "/var/log", "/mnt/data"]);
        assert_eq!(
            order,
            [
                "/var/lib/docker/overlay2/abc/merged",
                "/var/log",
                "/var/lib/docker",
                "/mnt/data"
            ]
        );
    }
}
