//! The host tools an image build needs, each with the Debian package that provides it,
//! so a missing one is named precisely before any work starts. An image of another
//! architecture than the host's also needs a cross compiler for its kernel and, for its
//! root filesystem (whose package scripts run in a chroot), that architecture's programs
//! run through QEMU's user-mode emulator registered with binfmt_misc.

use std::path::{Path, PathBuf};

use rmachine_protocol::image::Arch;

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

/// Where the kernel lists the binfmt_misc handlers.
const BINFMT_DIR: &str = "/proc/sys/fs/binfmt_misc";

/// The architecture this builder runs on, if guest images of it exist.
pub(crate) fn host_arch() -> Option<Arch> {
    Arch::from_target_arch(std::env::consts::ARCH)
}

/// The GNU triple of an architecture's Linux toolchain (`aarch64-linux-gnu`).
pub(crate) fn gnu_triple(arch: Arch) -> &'static str {
    match arch {
        Arch::Amd64 => "x86_64-linux-gnu",
        Arch::Arm64 => "aarch64-linux-gnu",
    }
}

/// The cross compiler for `arch` and its Debian package (`gcc-aarch64-linux-gnu`).
fn cross_gcc(arch: Arch) -> (String, String) {
    let triple = gnu_triple(arch);
    (
        format!("{triple}-gcc"),
        format!("gcc-{}", triple.replace('_', "-")),
    )
}

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

/// Fails with the first missing tool, header or keyring, or when not root; for an image
/// of another architecture than the host's, also without its cross compiler or binfmt
/// handler.
pub(crate) fn check_all(arch: Arch) -> Result<(), ImageError> {
    check(TOOLS, HEADERS, Path::new(TRIXIE_KEYRING))?;
    if host_arch() != Some(arch) {
        let (gcc, package) = cross_gcc(arch);
        check(&[(&gcc, &package)], &[], Path::new(TRIXIE_KEYRING))?;
        check_binfmt(Path::new(BINFMT_DIR), arch)?;
    }
    if !is_root() {
        return Err(ImageError::NotRoot);
    }
    Ok(())
}

/// Checks that `binfmt_dir` has an enabled `qemu-<arch>` handler with the F flag (the
/// emulator opened when it was registered, so it runs inside debootstrap's chroot, which
/// does not hold it).
fn check_binfmt(binfmt_dir: &Path, arch: Arch) -> Result<(), ImageError> {
    let handler = format!("qemu-{}", arch.kernel_name());
    let missing = |problem: String| ImageError::NoBinfmt {
        arch,
        handler: handler.clone(),
        problem,
    };
    if !binfmt_dir.join("status").exists() {
        return Err(missing(format!(
            "binfmt_misc is not mounted (mount -t binfmt_misc binfmt_misc {})",
            binfmt_dir.display()
        )));
    }
    let path = binfmt_dir.join(&handler);
    let text = std::fs::read_to_string(&path)
        .map_err(|_| missing(format!("{} does not exist", path.display())))?;
    if text.lines().next() != Some("enabled") {
        return Err(missing(format!(
            "it is disabled (update-binfmts --enable {handler})"
        )));
    }
    let flags = text
        .lines()
        .find_map(|l| l.strip_prefix("flags:"))
        .map(str::trim)
        .unwrap_or("");
    if !flags.contains('F') {
        return Err(missing(format!(
            "it lacks the F flag (flags: {flags:?}); the emulator must be opened when registered"
        )));
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
    fn test_binfmt_handler_checked_and_packages_named() {
        let dir = tempfile::tempdir().unwrap();
        let msg = check_binfmt(dir.path(), Arch::Arm64)
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("not mounted") && msg.contains("qemu-user-static"),
            "{msg}"
        );
        std::fs::write(dir.path().join("status"), "enabled\n").unwrap();
        let msg = check_binfmt(dir.path(), Arch::Arm64)
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("qemu-aarch64")
                && msg.contains("qemu-user-static")
                && msg.contains("binfmt-support")
                && msg.contains("arm64"),
            "{msg}"
        );
        let handler = dir.path().join("qemu-aarch64");
        std::fs::write(
            &handler,
            "disabled\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\nflags: PF\n",
        )
        .unwrap();
        let msg = check_binfmt(dir.path(), Arch::Arm64)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("disabled"), "{msg}");
        std::fs::write(
            &handler,
            "enabled\ninterpreter /usr/bin/qemu-aarch64\nflags: P\noffset 0\n",
        )
        .unwrap();
        let msg = check_binfmt(dir.path(), Arch::Arm64)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("F flag"), "{msg}");
        std::fs::write(
            &handler,
            "enabled\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\nflags: PF\noffset 0\n",
        )
        .unwrap();
        check_binfmt(dir.path(), Arch::Arm64).unwrap();
        // amd64 on an arm64 host: its own handler.
        let msg = check_binfmt(dir.path(), Arch::Amd64)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("qemu-x86_64"), "{msg}");
    }

    #[test]
    fn test_cross_compiler_names_its_package() {
        assert_eq!(
            cross_gcc(Arch::Arm64),
            (
                "aarch64-linux-gnu-gcc".into(),
                "gcc-aarch64-linux-gnu".into()
            )
        );
        assert_eq!(
            cross_gcc(Arch::Amd64),
            ("x86_64-linux-gnu-gcc".into(), "gcc-x86-64-linux-gnu".into())
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
