//! The host tools an image build needs, each with the Debian package that provides it,
//! so a missing one is named precisely before any work starts.

use std::path::{Path, PathBuf};

use crate::ImageError;

/// (program, Debian package)
const TOOLS: &[(&str, &str)] = &[
    ("apt-get", "apt"),
    ("dpkg-deb", "dpkg"),
    ("debootstrap", "debootstrap"),
    ("mkfs.erofs", "erofs-utils"),
    ("make", "make"),
    ("gcc", "gcc"),
    ("bc", "bc"),
    ("flex", "flex"),
    ("bison", "bison"),
    ("tar", "tar"),
    ("xz", "xz-utils"),
    ("cpio", "cpio"),
];

/// (header file, Debian package) the kernel build compiles against.
const HEADERS: &[(&str, &str)] = &[
    ("/usr/include/libelf.h", "libelf-dev"),
    ("/usr/include/openssl/ssl.h", "libssl-dev"),
];

/// The keyring that signs Debian trixie.
pub(crate) const TRIXIE_KEYRING: &str = "/usr/share/keyrings/debian-archive-trixie-stable.gpg";

/// Finds `program` on PATH.
pub(crate) fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|dir| dir.join(program))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Fails with the first missing tool, header or keyring, or when not root.
pub(crate) fn check_all() -> Result<(), ImageError> {
    check(TOOLS, HEADERS, Path::new(TRIXIE_KEYRING))?;
    if !is_root() {
        return Err(ImageError::NotRoot);
    }
    Ok(())
}

fn check(
    tools: &[(&str, &str)],
    headers: &[(&str, &str)],
    keyring: &Path,
) -> Result<(), ImageError> {
    for (tool, package) in tools {
        if which(tool).is_none() {
            return Err(ImageError::MissingTool {
                tool: tool.to_string(),
                package: package.to_string(),
            });
        }
    }
    for (header, package) in headers {
        if !Path::new(header).exists() {
            return Err(ImageError::MissingFile {
                path: PathBuf::from(header),
                package: package.to_string(),
            });
        }
    }
    if !keyring.exists() {
        return Err(ImageError::MissingFile {
            path: keyring.to_path_buf(),
            package: "debian-archive-keyring".into(),
        });
    }
    Ok(())
}

/// Whether this process runs as root (the image build and host-wide installs need it).
pub fn is_root() -> bool {
    // /proc/self/status "Uid:" line: real, effective, saved, fs.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|rest| rest.split_whitespace().nth(1).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_missing_tool_names_its_package() {
        let err = check(
            &[("sh", "dash"), ("rmachine-no-such-tool", "some-pkg")],
            &[],
            Path::new("/"),
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("rmachine-no-such-tool") && msg.contains("some-pkg"),
            "{msg}"
        );
    }

    #[test]
    fn test_missing_header_and_keyring_are_named() {
        let err = check(&[], &[("/nonexistent.h", "x-dev")], Path::new("/")).unwrap_err();
        assert!(err.to_string().contains("x-dev"), "{err}");
        let err = check(&[], &[], Path::new("/nonexistent.gpg")).unwrap_err();
        assert!(err.to_string().contains("debian-archive-keyring"), "{err}");
    }
}
