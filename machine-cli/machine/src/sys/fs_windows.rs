use std::fs::File;
use std::path::Path;

/// Creates (or truncates) a file; under the user's profile it inherits the folder's ACL,
/// which already keeps other users out.
pub fn create_private(path: &Path) -> std::io::Result<File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
}

/// Nothing to change: the file's ACL comes from its folder.
pub fn set_private(path: &Path) -> std::io::Result<()> {
    std::fs::metadata(path).map(|_| ())
}

/// Nothing to change: the folder's ACL comes from its parent in the user's profile.
pub fn set_private_dir(path: &Path) -> std::io::Result<()> {
    std::fs::metadata(path).map(|_| ())
}

/// Nothing to change: Windows runs any file by its extension.
pub fn set_executable(path: &Path) -> std::io::Result<()> {
    std::fs::metadata(path).map(|_| ())
}

/// Bytes free on the volume holding `path`: the disk whose mount point is the longest
/// prefix of it.
pub fn free_space(path: &Path) -> std::io::Result<u64> {
    let path = std::fs::canonicalize(path)?;
    let disks = sysinfo::Disks::new_with_refreshed_list();
    disks
        .iter()
        .filter(|d| path.starts_with(d.mount_point()))
        .max_by_key(|d| d.mount_point().as_os_str().len())
        .map(|d| d.available_space())
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("no volume holds {}", path.display()),
            )
        })
}

#[cfg(test)]
pub(super) fn assert_owner_only_or_executable(path: &Path) {
    assert!(path.is_file());
}
