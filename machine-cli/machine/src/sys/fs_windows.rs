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

#[cfg(test)]
pub(super) fn assert_owner_only_or_executable(path: &Path) {
    assert!(path.is_file());
}
