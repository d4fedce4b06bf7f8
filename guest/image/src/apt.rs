//! A separate apt configuration that reaches Debian trixie (own sources list, lists and
//! package cache under the build cache), used for downloads and debootstrap. The host's
//! own apt sources are never changed; only its mirror URL is borrowed. Its lists hold
//! the packages of every guest architecture (amd64 and arm64), so a package of another
//! architecture than the host's (`busybox-static:arm64`) can be downloaded without
//! changing the host's dpkg architectures.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use rmachine_protocol::image::Arch;

use crate::BuildDirs;

use crate::{command, tools, ImageError, Progress};

/// The suite the guest is built from.
pub(crate) const SUITE: &str = "trixie";

/// Package lists older than this are refreshed.
const LISTS_MAX_AGE: Duration = Duration::from_secs(6 * 3600);

pub(crate) struct Apt {
    root: PathBuf,
    mirror: String,
}

impl Apt {
    /// Writes the configuration and refreshes the package lists when they are stale.
    pub(crate) fn setup(
        dirs: &BuildDirs,
        mirror: Option<&str>,
        progress: &dyn Progress,
    ) -> Result<Apt, ImageError> {
        let mirror = match mirror {
            Some(m) => m.trim_end_matches('/').to_string(),
            None => match std::env::var("RMACHINE_DEBIAN_MIRROR") {
                Ok(m) if !m.is_empty() => m.trim_end_matches('/').to_string(),
                _ => host_mirror().ok_or(ImageError::NoMirror)?,
            },
        };
        let root = dirs.apt_cache();
        for dir in [
            "etc/preferences.d",
            "etc/sources.list.d",
            "lists/partial",
            "cache/archives/partial",
        ] {
            let d = root.join(dir);
            std::fs::create_dir_all(&d).map_err(ImageError::io("cannot create", &d))?;
        }
        let sources = format!(
            "deb [signed-by={}] {mirror} {SUITE} main\n",
            tools::TRIXIE_KEYRING
        );
        let list = root.join("etc/sources.list");
        let changed = std::fs::read_to_string(&list).ok().as_deref() != Some(sources.as_str());
        std::fs::write(&list, &sources).map_err(ImageError::io("cannot write", &list))?;
        let status = root.join("status");
        if !status.exists() {
            std::fs::write(&status, "").map_err(ImageError::io("cannot write", &status))?;
        }
        let apt = Apt { root, mirror };
        if changed || apt.lists_stale() || !apt.lists_complete() {
            progress.detail(&format!("apt-get update ({SUITE} from {})", apt.mirror));
            command::run(
                apt.command("apt-get").arg("update"),
                &apt.root.join("apt.log"),
                &mut |_| {},
            )?;
        }
        Ok(apt)
    }

    /// Whether the lists hold every architecture's packages (a cache shared with an older
    /// build has only amd64's).
    fn lists_complete(&self) -> bool {
        let names: Vec<String> = std::fs::read_dir(self.root.join("lists"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        Arch::ALL.iter().all(|arch| {
            let suffix = format!("binary-{arch}_Packages");
            names.iter().any(|n| n.ends_with(&suffix))
        })
    }

    fn lists_stale(&self) -> bool {
        let newest = std::fs::read_dir(self.root.join("lists"))
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with("_Packages"))
            .filter_map(|e| e.metadata().ok()?.modified().ok())
            .max();
        match newest {
            Some(t) => t.elapsed().map(|age| age > LISTS_MAX_AGE).unwrap_or(true),
            None => true,
        }
    }

    /// `apt-get` or `apt-cache` with this configuration.
    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        let r = |p: &str| self.root.join(p).display().to_string();
        for (k, v) in [
            ("Dir::Etc::SourceList", r("etc/sources.list")),
            ("Dir::Etc::SourceParts", r("etc/sources.list.d")),
            ("Dir::Etc::Preferences", r("etc/preferences")),
            ("Dir::Etc::PreferencesParts", r("etc/preferences.d")),
            ("Dir::State::Lists", r("lists")),
            ("Dir::State::Status", r("status")),
            ("Dir::Cache", r("cache")),
            ("APT::Architecture", host_arch().to_string()),
            ("APT::Architectures", architectures()),
            ("APT::Sandbox::User", "root".to_string()),
            ("Debug::NoLocking", "true".to_string()),
        ] {
            cmd.arg("-o").arg(format!("{k}={v}"));
        }
        cmd.env("DEBIAN_FRONTEND", "noninteractive");
        cmd
    }

    /// The version apt would install of `package`.
    pub(crate) fn candidate(&self, package: &str) -> Result<String, ImageError> {
        let out = command::output(self.command("apt-cache").args(["policy", package]))?;
        parse_candidate(&out).ok_or_else(|| ImageError::MissingPackage(package.to_string()))
    }

    /// Downloads `package=version` into `dir` (`package` may name its architecture:
    /// `busybox-static:arm64`); returns the .deb's path.
    pub(crate) fn download(
        &self,
        package: &str,
        version: &str,
        dir: &Path,
    ) -> Result<PathBuf, ImageError> {
        std::fs::create_dir_all(dir).map_err(ImageError::io("cannot create", dir))?;
        command::run(
            self.command("apt-get")
                .current_dir(dir)
                .arg("download")
                .arg(format!("{package}={version}")),
            &self.root.join("apt.log"),
            &mut |_| {},
        )?;
        let (name, arch) = match package.split_once(':') {
            Some((name, arch)) => (name, arch.to_string()),
            None => (package, host_arch().to_string()),
        };
        std::fs::read_dir(dir)
            .map_err(ImageError::io("cannot list", dir))?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| is_deb_of(n, name, version, &arch))
            })
            .ok_or_else(|| ImageError::MissingPackage(package.to_string()))
    }

    pub(crate) fn mirror(&self) -> &str {
        &self.mirror
    }

    /// Where downloaded .deb files are kept between builds.
    pub(crate) fn archives(&self) -> PathBuf {
        self.root.join("cache/archives")
    }
}

/// The architecture apt installs for: the host's (the host tools' bundles).
fn host_arch() -> Arch {
    tools::host_arch().unwrap_or(Arch::Amd64)
}

/// Every guest architecture, the host's first.
fn architectures() -> String {
    let host = host_arch();
    std::iter::once(host)
        .chain(Arch::ALL.into_iter().filter(|a| *a != host))
        .map(Arch::as_str)
        .collect::<Vec<_>>()
        .join(",")
}

/// Whether `file` is the .deb apt downloads for `name=version` of `arch` (or of `all`):
/// `name_version_arch.deb`, an epoch's colon written `%3a`.
fn is_deb_of(file: &str, name: &str, version: &str, arch: &str) -> bool {
    let version = version.replace(':', "%3a");
    [arch, "all"]
        .iter()
        .any(|a| file == format!("{name}_{version}_{a}.deb"))
}

fn parse_candidate(policy: &str) -> Option<String> {
    policy
        .lines()
        .find_map(|l| l.trim().strip_prefix("Candidate:"))
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty() && v != "(none)")
}

/// The Debian archive URL of the host's apt sources (deb822 `.sources` or one-line
/// `.list`), skipping security and non-Debian repositories.
fn host_mirror() -> Option<String> {
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(entries) = std::fs::read_dir("/etc/apt/sources.list.d") {
        let mut more: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        more.sort();
        files.extend(more);
    }
    files.iter().find_map(|f| {
        let text = std::fs::read_to_string(f).ok()?;
        let name = f.to_string_lossy();
        if name.ends_with(".sources") {
            mirror_from_deb822(&text)
        } else if name.ends_with(".list") {
            mirror_from_one_line(&text)
        } else {
            None
        }
    })
}

fn is_debian_archive(uri: &str) -> bool {
    let uri = uri.trim_end_matches('/');
    (uri.starts_with("http://") || uri.starts_with("https://")) && uri.ends_with("/debian")
}

fn mirror_from_deb822(text: &str) -> Option<String> {
    text.split("\n\n").find_map(|stanza| {
        let field = |name: &str| {
            stanza
                .lines()
                .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
        };
        if field("Enabled:").is_some_and(|v| v == "no") {
            return None;
        }
        let uris = field("URIs:")?;
        uris.split_whitespace()
            .find(|u| is_debian_archive(u))
            .map(|u| u.trim_end_matches('/').to_string())
    })
}

fn mirror_from_one_line(text: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        if words.next() != Some("deb") {
            return None;
        }
        let mut uri = words.next()?;
        if uri.starts_with('[') {
            // Options: skip to the word that closes them.
            while !uri.ends_with(']') {
                uri = words.next()?;
            }
            uri = words.next()?;
        }
        is_debian_archive(uri).then(|| uri.trim_end_matches('/').to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_mirror_from_deb822_skips_security() {
        let text = "Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n\n\
                    Types: deb\nURIs: http://mirror.example/debian/\nSuites: bookworm\n";
        assert_eq!(
            mirror_from_deb822(text).as_deref(),
            Some("http://mirror.example/debian")
        );
        assert_eq!(
            mirror_from_deb822("Types: deb\nURIs: https://other.example/apt\n"),
            None
        );
    }

    #[test]
    fn test_mirror_from_one_line_with_options() {
        let text =
            "# comment\ndeb [arch=amd64 signed-by=/k.gpg] http://m.example/debian bookworm main\n";
        assert_eq!(
            mirror_from_one_line(text).as_deref(),
            Some("http://m.example/debian")
        );
        assert_eq!(
            mirror_from_one_line("deb-src http://m.example/debian bookworm main"),
            None
        );
    }

    #[test]
    fn test_deb_file_names_match_version_and_arch() {
        assert!(is_deb_of(
            "busybox-static_1%3a1.37.0-6_arm64.deb",
            "busybox-static",
            "1:1.37.0-6",
            "arm64"
        ));
        assert!(!is_deb_of(
            "busybox-static_1%3a1.37.0-6_amd64.deb",
            "busybox-static",
            "1:1.37.0-6",
            "arm64"
        ));
        assert!(!is_deb_of(
            "busybox-static_1%3a1.36.1-9_arm64.deb",
            "busybox-static",
            "1:1.37.0-6",
            "arm64"
        ));
        assert!(is_deb_of(
            "linux-source-6.12_6.12.117-1_all.deb",
            "linux-source-6.12",
            "6.12.117-1",
            "amd64"
        ));
        let archs = architectures();
        assert!(
            archs.contains("amd64") && archs.contains("arm64"),
            "{archs}"
        );
        assert!(archs.starts_with(host_arch().as_str()), "{archs}");
    }

    #[test]
    fn test_candidate_parsing() {
        let out =
            "linux-source-6.12:\n  Installed: (none)\n  Candidate: 6.12.117-1\n  Version table:\n";
        assert_eq!(parse_candidate(out).as_deref(), Some("6.12.117-1"));
        assert_eq!(parse_candidate("foo:\n  Candidate: (none)\n"), None);
        assert_eq!(parse_candidate(""), None);
    }
}
