//! Where a file the user saves (a container's log, an image archive) goes: the path they
//! chose in the system's file chooser, or, where no chooser can be shown (no display, or
//! `RMACHINE_DESKTOP_NO_FILE_DIALOG` set, as the window test does), a new file in their
//! Downloads folder. The UI says which it was.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{CommandError, CommandResult, ErrorKind};

/// Set (to anything) to never show a file chooser: files go to the Downloads folder.
pub const NO_FILE_DIALOG_ENV: &str = "RMACHINE_DESKTOP_NO_FILE_DIALOG";

/// Where a file was saved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Saved {
    pub path: String,
    /// The user chose the path; `false`: no file chooser could be shown, so it went to
    /// the Downloads folder.
    pub chosen: bool,
    /// What was written (lines of a log, bytes of an archive).
    pub count: u64,
}

/// Whether a file chooser can be shown here.
pub fn chooser_available() -> bool {
    if std::env::var_os(NO_FILE_DIALOG_ENV).is_some() {
        return false;
    }
    if cfg!(any(target_os = "linux", target_os = "freebsd")) {
        std::env::var_os("DISPLAY").is_some() || std::env::var_os("WAYLAND_DISPLAY").is_some()
    } else {
        true
    }
}

/// The user's Downloads folder: `XDG_DOWNLOAD_DIR`, the platform's (xdg-user-dirs,
/// `~/Downloads` on macOS and Windows), else `~/Downloads`.
pub fn downloads_dir() -> CommandResult<PathBuf> {
    if let Some(d) = std::env::var_os("XDG_DOWNLOAD_DIR").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d));
    }
    dirs::download_dir()
        .or_else(|| dirs::home_dir().map(|h| h.join("Downloads")))
        .ok_or_else(|| {
            CommandError::new(
                ErrorKind::Io,
                "there is no home folder to save into: set HOME (or XDG_DOWNLOAD_DIR) and try again",
            )
        })
}

/// A file name made of `name` (a container or image name) that no file system refuses.
pub fn file_name_of(name: &str, extension: &str) -> String {
    let mut s: String = name
        .trim_start_matches('/')
        .chars()
        .map(|c| match c {
            '/' | '\\' | ':' | '*' | '?' | '"' | '<' | '>' | '|' => '_',
            c if c.is_control() => '_',
            c => c,
        })
        .collect();
    if s.trim_matches(['.', '_', ' ']).is_empty() {
        s = "download".into();
    }
    format!("{s}.{extension}")
}

/// `dir/name`, or `dir/stem (2).ext`… when that exists: a download never overwrites.
pub fn unused_path(dir: &Path, name: &str) -> PathBuf {
    let first = dir.join(name);
    if !first.exists() {
        return first;
    }
    let (stem, ext) = match name.rsplit_once('.') {
        Some((s, e)) if !s.is_empty() => (s, format!(".{e}")),
        _ => (name, String::new()),
    };
    (2..)
        .map(|n| dir.join(format!("{stem} ({n}){ext}")))
        .find(|p| !p.exists())
        .expect("some numbered name is free")
}

/// The path in the Downloads folder for `name` (the folder made when missing).
pub fn in_downloads(name: &str) -> CommandResult<PathBuf> {
    let dir = downloads_dir()?;
    std::fs::create_dir_all(&dir).map_err(|e| {
        CommandError::new(
            ErrorKind::Io,
            format!(
                "cannot make the Downloads folder {}: {e}; create it, or set XDG_DOWNLOAD_DIR to a folder you can write to",
                dir.display()
            ),
        )
    })?;
    Ok(unused_path(&dir, name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_file_names_lose_separators() {
        assert_eq!(file_name_of("/web", "log"), "web.log");
        assert_eq!(
            file_name_of("reg:5000/app:1.0", "tar"),
            "reg_5000_app_1.0.tar"
        );
        assert_eq!(file_name_of("..", "log"), "download.log");
        assert_eq!(file_name_of("", "log"), "download.log");
    }

    #[test]
    fn test_unused_path_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(unused_path(dir.path(), "a.log"), dir.path().join("a.log"));
        std::fs::write(dir.path().join("a.log"), "").unwrap();
        assert_eq!(
            unused_path(dir.path(), "a.log"),
            dir.path().join("a (2).log")
        );
        std::fs::write(dir.path().join("a (2).log"), "").unwrap();
        assert_eq!(
            unused_path(dir.path(), "a.log"),
            dir.path().join("a (3).log")
        );
        std::fs::write(dir.path().join("noext"), "").unwrap();
        assert_eq!(
            unused_path(dir.path(), "noext"),
            dir.path().join("noext (2)")
        );
    }
}
