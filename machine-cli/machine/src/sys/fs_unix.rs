use std::fs::File;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Creates (or truncates) a file only its owner can read and write (0600).
pub fn create_private(path: &Path) -> std::io::Result<File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
}

/// Makes an existing file (or socket) its owner's alone (0600).
pub fn set_private(path: &Path) -> std::io::Result<()> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
}

/// Makes a folder its owner's alone (0700).
pub fn set_private_dir(path: &Path) -> std::io::Result<()> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
}

/// Makes a file executable by everyone, writable by its owner (0755).
pub fn set_executable(path: &Path) -> std::io::Result<()> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
}

/// Bytes free on the filesystem holding `path`, for this process: root may write the
/// blocks ext4 reserves for it, other users may not.
pub fn free_space(path: &Path) -> std::io::Result<u64> {
    let st = nix::sys::statvfs::statvfs(path).map_err(std::io::Error::from)?;
    let blocks = if nix::unistd::geteuid().is_root() {
        st.blocks_free()
    } else {
        st.blocks_available()
    };
    // Both are `c_ulong`-sized integers (u32 or u64 by platform).
    Ok((blocks as u64).saturating_mul(st.fragment_size() as u64))
}

#[cfg(test)]
pub(super) fn assert_owner_only_or_executable(path: &Path) {
    let mode = std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o755);
}
