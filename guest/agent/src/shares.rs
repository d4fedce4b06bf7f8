//! Shared host folders: each virtio-fs tag is mounted at the same absolute path as on the
//! host, so `docker run -v "$PWD":/src` names the same folder on both sides.
//!
//! The root filesystem is read-only, so a mount point that does not exist yet is made
//! where it can be: under a writable parent directly; under a read-only parent by first
//! laying a writable overlay (tmpfs upper layer in /run) over that parent, which keeps
//! what the image has there. The root directory itself is never overlaid (that would
//! hide every other mount), so shares need a first path component that exists in the
//! image (`/home`, `/root`, `/Users`, `/tmp`, `/mnt`, …).

use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{mount, MsFlags};
use rmachine_protocol::config_disk::Mount;
use tracing::{info, warn};

/// Where overlays over read-only parents keep their upper layers.
const OVERLAY_STATE: &str = "/run/rmachine/overlays";

#[derive(Debug, thiserror::Error)]
pub enum ShareError {
    #[error("share path {0:?} must be absolute and plain (no `..`)")]
    BadPath(String),
    #[error("cannot create the mount point {path}: its first component does not exist in the read-only image")]
    NoRoot { path: String },
    #[error("cannot create {path}")]
    Create {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot overlay {path} to make it writable")]
    Overlay {
        path: String,
        #[source]
        source: Errno,
    },
    #[error("cannot mount virtio-fs tag {tag} on {path}")]
    Mount {
        tag: String,
        path: String,
        #[source]
        source: Errno,
    },
}

/// Mounts every share; a failure is logged and the others still mount.
pub fn mount_all(mounts: &[Mount]) {
    for m in mounts {
        match mount_one(m) {
            Ok(()) => {
                info!(tag = %m.tag, path = %m.guest_path, read_only = m.read_only, "shared folder mounted")
            }
            Err(e) => {
                warn!(tag = %m.tag, error = %crate::logging::error_chain(&e), "shared folder not mounted")
            }
        }
    }
}

fn mount_one(m: &Mount) -> Result<(), ShareError> {
    let path = plain_absolute(&m.guest_path)?;
    prepare_mount_point(&path, Path::new("/"))?;
    let mut flags = MsFlags::MS_NOATIME;
    if m.read_only {
        flags |= MsFlags::MS_RDONLY;
    }
    let p = path.display().to_string();
    mount(
        Some(m.tag.as_str()),
        p.as_str(),
        Some("virtiofs"),
        flags,
        None::<&str>,
    )
    .map_err(|source| ShareError::Mount {
        tag: m.tag.clone(),
        path: p.clone(),
        source,
    })
}

/// The path if it is absolute without `.`/`..` components.
fn plain_absolute(text: &str) -> Result<PathBuf, ShareError> {
    let path = PathBuf::from(text);
    let plain = path.is_absolute()
        && path
            .components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
    if plain && path != Path::new("/") {
        Ok(path)
    } else {
        Err(ShareError::BadPath(text.to_string()))
    }
}

/// Makes sure `path` exists (under `root`, `/` outside tests), overlaying its deepest
/// existing ancestor when that is read-only.
fn prepare_mount_point(path: &Path, root: &Path) -> Result<(), ShareError> {
    let full = root.join(path.strip_prefix("/").unwrap_or(path));
    if full.is_dir() {
        return Ok(());
    }
    let create = |p: &Path| {
        std::fs::create_dir_all(p).map_err(|source| ShareError::Create {
            path: p.display().to_string(),
            source,
        })
    };
    match std::fs::create_dir_all(&full) {
        Ok(()) => return Ok(()),
        Err(e) if e.raw_os_error() == Some(Errno::EROFS as i32) => {}
        Err(source) => {
            return Err(ShareError::Create {
                path: full.display().to_string(),
                source,
            })
        }
    }
    let ancestor = full
        .ancestors()
        .skip(1)
        .find(|a| a.is_dir())
        .unwrap_or(root);
    if ancestor == root {
        return Err(ShareError::NoRoot {
            path: path.display().to_string(),
        });
    }
    overlay_writable(ancestor)?;
    create(&full)
}

/// Lays a writable overlay over a read-only directory, keeping its content.
fn overlay_writable(dir: &Path) -> Result<(), ShareError> {
    let key = dir
        .display()
        .to_string()
        .trim_start_matches('/')
        .replace('/', "_");
    let state = Path::new(OVERLAY_STATE).join(key);
    let (upper, work) = (state.join("upper"), state.join("work"));
    for d in [&upper, &work] {
        std::fs::create_dir_all(d).map_err(|source| ShareError::Create {
            path: d.display().to_string(),
            source,
        })?;
    }
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        dir.display(),
        upper.display(),
        work.display()
    );
    let target = dir.display().to_string();
    mount(
        Some("overlay"),
        target.as_str(),
        Some("overlay"),
        MsFlags::empty(),
        Some(options.as_str()),
    )
    .map_err(|source| ShareError::Overlay {
        path: target.clone(),
        source,
    })?;
    info!(path = %target, "overlaid a read-only directory to hold a share's mount point");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_share_paths_must_be_plain_absolute() {
        assert!(plain_absolute("/home/u/src").is_ok());
        for bad in ["", "/", "relative/x", "/home/../etc"] {
            assert!(plain_absolute(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn test_mount_point_is_created_under_a_writable_parent() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("tmp")).unwrap();
        prepare_mount_point(Path::new("/tmp/a/b"), root.path()).unwrap();
        assert!(root.path().join("tmp/a/b").is_dir());
        // Existing: nothing to do.
        prepare_mount_point(Path::new("/tmp/a/b"), root.path()).unwrap();
    }
}
