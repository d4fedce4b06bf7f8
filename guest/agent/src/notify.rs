//! Host-side changes in shared folders, replayed for inotify watchers in the guest.
//!
//! virtio-fs has no way for the host to tell the guest kernel that a file changed, so a
//! watcher in a container (a dev server's file watcher) hears nothing of a host edit. The
//! host agent watches the folders that running containers bind and sends the changed paths;
//! this module touches each one in the guest so that the guest kernel itself raises the
//! events: the same mode set again (`IN_ATTRIB`, reported to watchers of the file and of its
//! folder) and, for a regular file, an open for writing closed again without writing
//! (`IN_OPEN`, `IN_CLOSE_WRITE`; the content and its modification time stay as they are).
//! A path that no longer exists touches its folder instead, so folder watchers rescan.
//!
//! On the host these touches are an attribute change and an open/close, which the host agent
//! does not forward, so they do not echo back.

use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

/// Touches every path that lies inside one of `shares`; returns (touched, skipped).
pub fn replay(paths: &[String], shares: &[PathBuf]) -> (u32, u32) {
    let (mut touched, mut skipped) = (0u32, 0u32);
    for path in paths {
        match target(Path::new(path), shares) {
            Some(p) if touch(&p) => touched += 1,
            _ => skipped += 1,
        }
    }
    (touched, skipped)
}

/// The path to touch: the path itself when it exists, else its nearest existing folder,
/// provided it is plain, absolute and inside a share (a share's own root included).
fn target(path: &Path, shares: &[PathBuf]) -> Option<PathBuf> {
    let plain = path.is_absolute()
        && path
            .components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
    if !plain {
        return None;
    }
    let share = shares.iter().find(|s| path.starts_with(s))?;
    let mut candidate = path.to_path_buf();
    loop {
        if candidate.symlink_metadata().is_ok() {
            return Some(candidate);
        }
        if candidate == *share || !candidate.pop() {
            return None;
        }
    }
}

/// Raises the events on one existing path; symlinks are left alone (chmod would follow them).
fn touch(path: &Path) -> bool {
    let Ok(meta) = path.symlink_metadata() else {
        return false;
    };
    if meta.file_type().is_symlink() {
        return false;
    }
    let mode = meta.permissions().mode() & 0o7777;
    let attrib = std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).is_ok();
    let close_write = meta.is_file()
        && std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK | nix::libc::O_NOCTTY)
            .open(path)
            .is_ok();
    attrib || close_write
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_target_stays_inside_shares_and_falls_back_to_the_folder() {
        let dir = tempfile::tempdir().unwrap();
        let share = dir.path().join("share");
        std::fs::create_dir_all(share.join("a")).unwrap();
        std::fs::write(share.join("a/f.txt"), "x").unwrap();
        let shares = vec![share.clone()];
        assert_eq!(
            target(&share.join("a/f.txt"), &shares),
            Some(share.join("a/f.txt"))
        );
        // Deleted on the host: its folder.
        assert_eq!(
            target(&share.join("a/gone/deeper.txt"), &shares),
            Some(share.join("a"))
        );
        // Outside every share, relative, or with `..`: nothing.
        assert_eq!(target(&dir.path().join("other"), &shares), None);
        assert_eq!(target(Path::new("share/a"), &shares), None);
        assert_eq!(target(&share.join("../share/a"), &shares), None);
    }

    #[test]
    fn test_replay_keeps_content_and_mtime_and_counts() {
        let dir = tempfile::tempdir().unwrap();
        let share = dir.path().join("share");
        std::fs::create_dir_all(&share).unwrap();
        let file = share.join("f.txt");
        std::fs::write(&file, "content").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).unwrap();
        let before = std::fs::metadata(&file).unwrap().modified().unwrap();
        std::os::unix::fs::symlink("/etc/passwd", share.join("link")).unwrap();
        let paths = vec![
            file.display().to_string(),
            share.join("missing.txt").display().to_string(),
            share.join("link").display().to_string(),
            "/etc/passwd".to_string(),
        ];
        assert_eq!(replay(&paths, std::slice::from_ref(&share)), (2, 2));
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "content");
        let meta = std::fs::metadata(&file).unwrap();
        assert_eq!(meta.modified().unwrap(), before);
        assert_eq!(meta.permissions().mode() & 0o7777, 0o640);
    }
}
