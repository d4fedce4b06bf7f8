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

/// Bytes free to this user on the volume holding `path` (which must exist). Windows answers
/// for any folder on a volume (`GetDiskFreeSpaceExW`), drive letter or mounted folder; a
/// table of volumes (sysinfo's) is empty under wine.
pub fn free_space(path: &Path) -> std::io::Result<u64> {
    std::fs::metadata(path)?;
    fs4::available_space(path).map_err(|e| {
        std::io::Error::new(e.kind(), format!("free space of {}: {e}", path.display()))
    })
}

#[cfg(test)]
pub(super) fn assert_owner_only_or_executable(path: &Path) {
    assert!(path.is_file());
}
