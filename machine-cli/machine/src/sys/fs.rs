//! Files only their owner may read, and executables. On unix these are file modes; on
//! Windows a file in the user's profile is already the user's alone (its folder's ACL),
//! and any file can be run. And the free space of the filesystem holding a file.

#[cfg(unix)]
#[path = "fs_unix.rs"]
mod os;
#[cfg(windows)]
#[path = "fs_windows.rs"]
mod os;

pub use os::{create_private, free_space, set_executable, set_private, set_private_dir};

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn test_private_file_is_written_and_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        create_private(&path).unwrap().write_all(b"{}").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"{}");
        set_private(&path).unwrap();
        set_executable(&path).unwrap();
        os::assert_owner_only_or_executable(&path);
    }

    #[test]
    fn test_free_space_of_a_folder_and_a_missing_path() {
        let dir = tempfile::tempdir().unwrap();
        let free = free_space(dir.path()).unwrap();
        assert!(free > 0, "a temp folder with no free space: {free}");
        assert!(free_space(&dir.path().join("missing")).is_err());
    }
}
