use std::path::{Path, PathBuf};

/// The executable's own folder (`Program Files\rmachine`).
pub fn system_dir_of(exe: &Path) -> Option<PathBuf> {
    exe.parent()
        .filter(|dir| !dir.as_os_str().is_empty())
        .map(Path::to_path_buf)
}

#[cfg(test)]
pub(super) const EXAMPLES: &[(&str, Option<&str>)] = &[
    (
        r"C:\Program Files\rmachine\rmachine.exe",
        Some(r"C:\Program Files\rmachine"),
    ),
    ("rmachine.exe", None),
];
