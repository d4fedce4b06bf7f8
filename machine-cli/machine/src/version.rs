//! The versions of an install, as `rmachine version` prints them: one number for the CLI,
//! the VMM and the desktop app (the workspace's), the agent protocol this build speaks,
//! the rmachine-vmm binary a machine would run (asked for its own version), the host
//! daemons it would run beside a VM, and the guest images it could boot.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::host_tools;
use crate::image_store::{self, Installed};
use crate::paths::Paths;
use crate::platform::HostOs;

/// The version of rmachine, its VMM and its desktop app (one number: the workspace's).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// What `rmachine version` reports.
#[derive(Debug, Serialize)]
pub struct Report {
    /// This build's version.
    pub version: &'static str,
    /// The guest agent protocol this build speaks: images of another are not booted.
    pub protocol: u32,
    /// The rmachine-vmm a machine would run; `None` when there is none (machines then run
    /// under QEMU).
    pub vmm: Option<VmmVersion>,
    /// The host daemons a machine runs beside its VM (virtiofsd, passt), as found (Linux
    /// hosts; empty elsewhere).
    pub host_tools: Vec<HostToolFound>,
    /// The installed images, the user's first (see [`image_store::list`]).
    pub images: Vec<Installed>,
    /// Image folders that cannot be used, and why.
    pub problems: Vec<String>,
}

/// A host daemon and the binary a machine would run (`None`: not installed).
#[derive(Debug, Serialize)]
pub struct HostToolFound {
    pub name: &'static str,
    pub binary: Option<PathBuf>,
}

/// An rmachine-vmm binary and the version it reports.
#[derive(Debug, Serialize)]
pub struct VmmVersion {
    pub path: PathBuf,
    /// What `rmachine-vmm --version` printed after its name (`None`: it did not answer).
    pub version: Option<String>,
    /// Why it did not answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl VmmVersion {
    /// Whether the binary is of this build's version.
    pub fn matches(&self) -> bool {
        self.version.as_deref() == Some(VERSION)
    }
}

/// The report: the VMM this executable would run and the images of `paths` (none
/// without).
pub fn report(paths: Option<&Paths>) -> Report {
    let (images, problems) = match paths.map(image_store::list) {
        None => (Vec::new(), Vec::new()),
        Some(Ok(listing)) => (
            listing.images,
            (listing.broken.iter())
                .map(|e| crate::lifecycle::error_chain(e))
                .collect(),
        ),
        Some(Err(e)) => (Vec::new(), vec![crate::lifecycle::error_chain(&e)]),
    };
    Report {
        version: VERSION,
        protocol: rmachine_protocol::PROTOCOL_VERSION,
        vmm: crate::driver::vmm_binary().map(|path| ask_vmm(&path)),
        // The bundles are Debian's, for Linux hosts; elsewhere they mean nothing.
        host_tools: match paths.filter(|_| crate::platform::Platform::current().os == HostOs::Linux)
        {
            Some(paths) => [&host_tools::VIRTIOFSD, &host_tools::PASST]
                .into_iter()
                .map(|bundle| HostToolFound {
                    name: bundle.name,
                    binary: bundle.find(paths).map(|tool| tool.binary),
                })
                .collect(),
            None => Vec::new(),
        },
        images,
        problems,
    }
}

/// Runs `rmachine-vmm --version` (clap's `rmachine-vmm 0.1.0`).
pub fn ask_vmm(path: &Path) -> VmmVersion {
    let answer = std::process::Command::new(path)
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .output();
    let (version, error) = match answer {
        Ok(out) if out.status.success() => {
            match parse_vmm_version(&String::from_utf8_lossy(&out.stdout)) {
                Some(v) => (Some(v), None),
                None => (
                    None,
                    Some(format!(
                        "unexpected answer to --version: {:?}",
                        String::from_utf8_lossy(&out.stdout).trim()
                    )),
                ),
            }
        }
        Ok(out) => (
            None,
            Some(format!(
                "--version failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )),
        ),
        Err(e) => (None, Some(format!("cannot run it: {e}"))),
    };
    VmmVersion {
        path: path.to_path_buf(),
        version,
        error,
    }
}

/// The version in `rmachine-vmm 0.1.0`.
fn parse_vmm_version(stdout: &str) -> Option<String> {
    let line = stdout.lines().next()?.trim();
    let version = line.strip_prefix("rmachine-vmm ")?.trim();
    (!version.is_empty()).then(|| version.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_vmm_version_is_parsed_from_clap_output() {
        assert_eq!(
            parse_vmm_version("rmachine-vmm 0.1.0\n").as_deref(),
            Some("0.1.0")
        );
        assert_eq!(parse_vmm_version("qemu 7.2\n"), None);
        assert_eq!(parse_vmm_version(""), None);
        assert_eq!(parse_vmm_version("rmachine-vmm \n"), None);
    }

    #[test]
    fn test_a_vmm_that_does_not_answer_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("rmachine-vmm");
        let v = ask_vmm(&missing);
        assert_eq!(v.version, None);
        assert!(v.error.unwrap().contains("cannot run it"));
        assert!(!ask_vmm(&missing).matches());
    }

    #[test]
    fn test_report_lists_images_and_broken_folders() {
        let dir = tempfile::tempdir().unwrap();
        let system = dir.path().join("system");
        std::fs::create_dir_all(system.join("images/0.1.0-amd64-x")).unwrap();
        let paths = Paths::with_roots(dir.path().join("h"), dir.path().join("c"))
            .with_system_dir(Some(system));
        let report = report(Some(&paths));
        assert_eq!(report.version, env!("CARGO_PKG_VERSION"));
        assert!(report.images.is_empty());
        assert_eq!(report.problems.len(), 1);
        assert!(
            report.problems[0].contains("0.1.0-amd64-x"),
            "{:?}",
            report.problems
        );
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["protocol"], rmachine_protocol::PROTOCOL_VERSION);
    }
}
