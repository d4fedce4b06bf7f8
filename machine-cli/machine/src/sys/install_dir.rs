//! Where an installed rmachine keeps the read-only files it came with (a package's guest
//! images and host tools). It is found from the running executable, so any install
//! prefix works and a binary only ever sees the files of its own install: on unix
//! `<prefix>/bin/rmachine` has `<prefix>/lib/rmachine` (`/usr/lib/rmachine` for the
//! .deb, `/usr/local/lib/rmachine` for the tarball's default); on Windows it is the
//! executable's own folder (`Program Files\rmachine`: compiled, untested).

use std::path::{Path, PathBuf};

#[cfg(unix)]
#[path = "install_dir_unix.rs"]
mod os;
#[cfg(windows)]
#[path = "install_dir_windows.rs"]
mod os;

/// The system folder of an install whose executable is `exe`, if `exe` has one.
pub fn system_dir_of(exe: &Path) -> Option<PathBuf> {
    os::system_dir_of(exe)
}

/// The system folder of the running executable's install.
pub fn system_dir() -> Option<PathBuf> {
    system_dir_of(&std::env::current_exe().ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_system_dir_follows_the_executable() {
        for (exe, dir) in os::EXAMPLES {
            assert_eq!(
                system_dir_of(Path::new(exe)).as_deref(),
                dir.map(Path::new),
                "{exe}"
            );
        }
    }
}
