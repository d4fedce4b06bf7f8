use std::path::{Path, PathBuf};

/// `<prefix>/bin/rmachine` → `<prefix>/lib/rmachine`.
pub fn system_dir_of(exe: &Path) -> Option<PathBuf> {
    let prefix = exe.parent()?.parent()?;
    Some(prefix.join("lib").join("rmachine"))
}

#[cfg(test)]
pub(super) const EXAMPLES: &[(&str, Option<&str>)] = &[
    ("/usr/bin/rmachine", Some("/usr/lib/rmachine")),
    ("/usr/local/bin/rmachine", Some("/usr/local/lib/rmachine")),
    (
        "/opt/rmachine/bin/rmachine-desktop",
        Some("/opt/rmachine/lib/rmachine"),
    ),
    ("/rmachine", None),
];
