//! What a remote host is: its OS (`/etc/os-release`), architecture, whether `sudo -n`
//! works, systemd, an engine already there, and the names and addresses the engine's TLS
//! certificate must carry. One shell script runs on the host; its `key=value` lines are
//! parsed here, so the parsing is tested without a host.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Session, SshError};

/// The probe script: POSIX sh, read-only, no sudo prompt (`sudo -n`).
const SCRIPT: &str = r#"
echo "uid=$(id -u)"
echo "user=$(id -un)"
echo "groups=$(id -Gn)"
echo "arch=$(uname -m)"
echo "hostname=$(hostname 2>/dev/null || cat /etc/hostname 2>/dev/null)"
echo "fqdn=$(hostname -f 2>/dev/null)"
echo "addresses=$(hostname -I 2>/dev/null || ip -o addr show 2>/dev/null | awk '{print $4}' | cut -d/ -f1 | tr '\n' ' ')"
if [ -d /run/systemd/system ]; then echo "systemd=yes"; else echo "systemd=no"; fi
if [ "$(id -u)" = 0 ] || sudo -n true >/dev/null 2>&1; then echo "sudo=yes"; else echo "sudo=no"; fi
echo "dockerd=$(command -v dockerd 2>/dev/null)"
echo "docker_service=$(systemctl is-active docker 2>/dev/null)"
if [ -S /var/run/docker.sock ]; then echo "socket=yes"; else echo "socket=no"; fi
if [ -r /var/run/docker.sock ] && [ -w /var/run/docker.sock ]; then echo "socket_access=yes"; else echo "socket_access=no"; fi
echo "tls_dropin=$(test -f /etc/systemd/system/docker.service.d/rmachine-tls.conf && echo yes || echo no)"
echo "---os-release"
cat /etc/os-release 2>/dev/null || cat /usr/lib/os-release 2>/dev/null
"#;

/// How long the probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(60);

/// `/etc/os-release`, the fields rmachine reads.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OsRelease {
    /// `ID`: `debian`, `ubuntu`, `fedora`, …
    pub id: String,
    /// `ID_LIKE`, space separated.
    pub id_like: Vec<String>,
    /// `VERSION_ID` (absent on Debian testing).
    pub version_id: Option<String>,
    /// `VERSION_CODENAME`: `trixie`, `noble`, …
    pub codename: Option<String>,
    /// `PRETTY_NAME`, for messages.
    pub pretty_name: String,
}

impl OsRelease {
    /// Parses the `KEY=value` lines of os-release (values may be quoted).
    pub fn parse(text: &str) -> OsRelease {
        let mut fields = BTreeMap::new();
        for line in text.lines() {
            let Some((k, v)) = line.trim().split_once('=') else {
                continue;
            };
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .or_else(|| v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
                .unwrap_or(v);
            fields.insert(k.trim().to_string(), v.replace("\\\"", "\""));
        }
        let get = |k: &str| fields.get(k).cloned().filter(|v| !v.is_empty());
        OsRelease {
            id: get("ID").unwrap_or_default().to_ascii_lowercase(),
            id_like: get("ID_LIKE")
                .map(|v| v.split_whitespace().map(str::to_string).collect())
                .unwrap_or_default(),
            version_id: get("VERSION_ID"),
            codename: get("VERSION_CODENAME"),
            pretty_name: get("PRETTY_NAME")
                .or_else(|| get("NAME"))
                .unwrap_or_else(|| "an unknown Linux".into()),
        }
    }
}

/// A probed host.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Probe {
    pub os: OsRelease,
    /// `uname -m`: `x86_64`, `aarch64`, …
    pub arch: String,
    pub user: String,
    pub root: bool,
    pub groups: Vec<String>,
    /// `sudo -n` works (or the user is root).
    pub sudo: bool,
    pub systemd: bool,
    /// Where `dockerd` is, when installed.
    pub dockerd: Option<String>,
    /// `systemctl is-active docker`: `active`, `inactive`, `failed`, …
    pub docker_service: Option<String>,
    /// `/var/run/docker.sock` exists.
    pub socket: bool,
    /// The login user may read and write the socket (root or the `docker` group).
    pub socket_access: bool,
    /// rmachine's TLS drop-in is in place.
    pub tls_dropin: bool,
    pub hostname: String,
    pub fqdn: Option<String>,
    /// The host's own addresses (`hostname -I`).
    pub addresses: Vec<String>,
}

impl Probe {
    /// Parses the probe script's output.
    pub fn parse(output: &str) -> Probe {
        let (head, os) = output.split_once("---os-release").unwrap_or((output, ""));
        let mut p = Probe {
            os: OsRelease::parse(os),
            ..Probe::default()
        };
        for line in head.lines() {
            let Some((k, v)) = line.split_once('=') else {
                continue;
            };
            let v = v.trim();
            let yes = v == "yes";
            let opt = || Some(v.to_string()).filter(|v| !v.is_empty());
            match k.trim() {
                "uid" => p.root = v == "0",
                "user" => p.user = v.to_string(),
                "groups" => p.groups = v.split_whitespace().map(str::to_string).collect(),
                "arch" => p.arch = v.to_string(),
                "hostname" => p.hostname = v.to_string(),
                "fqdn" => p.fqdn = opt(),
                "addresses" => p.addresses = v.split_whitespace().map(str::to_string).collect(),
                "systemd" => p.systemd = yes,
                "sudo" => p.sudo = yes,
                "dockerd" => p.dockerd = opt(),
                "docker_service" => p.docker_service = opt(),
                "socket" => p.socket = yes,
                "socket_access" => p.socket_access = yes,
                "tls_dropin" => p.tls_dropin = yes,
                _ => {}
            }
        }
        p
    }

    /// An engine is installed.
    pub fn has_engine(&self) -> bool {
        self.dockerd.is_some()
    }

    /// The engine runs (its service is active, or its socket is there without systemd).
    pub fn engine_running(&self) -> bool {
        match self.docker_service.as_deref() {
            Some("active") | Some("reloading") => true,
            Some(_) if self.systemd => false,
            _ => self.socket,
        }
    }

    /// Every name and address of the host (for the engine's certificate), without
    /// duplicates, the loopback ones excluded (added separately).
    pub fn names_and_addresses(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let candidates = std::iter::once(self.hostname.clone())
            .chain(self.fqdn.clone())
            .chain(self.addresses.iter().cloned());
        for c in candidates {
            let c = c.trim().to_string();
            if !c.is_empty() && c != "localhost" && !out.contains(&c) {
                out.push(c);
            }
        }
        out
    }
}

/// Probes the host.
pub async fn run(session: &Session) -> Result<Probe, SshError> {
    let out = session
        .exec(SCRIPT, None, PROBE_TIMEOUT, &mut |_| {})
        .await?;
    if !out.stdout.contains("---os-release") {
        return Err(SshError::step(
            "probing the host",
            format!(
                "its shell did not run the probe script (is the login shell a POSIX shell?): {}",
                out.tail()
            ),
        ));
    }
    Ok(Probe::parse(&out.stdout))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) const TRIXIE: &str = r#"PRETTY_NAME="Debian GNU/Linux 13 (trixie)"
NAME="Debian GNU/Linux"
VERSION_ID="13"
VERSION="13 (trixie)"
VERSION_CODENAME=trixie
DEBIAN_VERSION_FULL=13.1
ID=debian
HOME_URL="https://www.debian.org/"
"#;

    pub(crate) const NOBLE: &str = r#"PRETTY_NAME="Ubuntu 24.04.1 LTS"
NAME="Ubuntu"
VERSION_ID="24.04"
VERSION="24.04.1 LTS (Noble Numbat)"
VERSION_CODENAME=noble
ID=ubuntu
ID_LIKE=debian
UBUNTU_CODENAME=noble
"#;

    pub(crate) const FEDORA: &str = r#"NAME="Fedora Linux"
VERSION="40 (Workstation Edition)"
ID=fedora
VERSION_ID=40
PRETTY_NAME="Fedora Linux 40 (Workstation Edition)"
"#;

    #[test]
    fn test_os_release_fields_and_quotes() {
        let d = OsRelease::parse(TRIXIE);
        assert_eq!(d.id, "debian");
        assert_eq!(d.codename.as_deref(), Some("trixie"));
        assert_eq!(d.version_id.as_deref(), Some("13"));
        assert_eq!(d.pretty_name, "Debian GNU/Linux 13 (trixie)");
        let u = OsRelease::parse(NOBLE);
        assert_eq!(
            (u.id.as_str(), u.id_like.clone()),
            ("ubuntu", vec!["debian".to_string()])
        );
        let garbage = OsRelease::parse("\u{0}\u{1}=\nno equals\n=\nID=\n");
        assert_eq!(garbage.id, "");
        assert_eq!(garbage.pretty_name, "an unknown Linux");
    }

    #[test]
    fn test_probe_output_parses() {
        let out = format!(
            "uid=1000\nuser=me\ngroups=me sudo\narch=x86_64\nhostname=box\nfqdn=box.lan\n\
             addresses=192.168.1.5 fe80::1 \nsystemd=yes\nsudo=yes\ndockerd=/usr/sbin/dockerd\n\
             docker_service=active\nsocket=yes\nsocket_access=no\ntls_dropin=no\n---os-release\n{TRIXIE}"
        );
        let p = Probe::parse(&out);
        assert!(!p.root && p.sudo && p.systemd && p.has_engine() && p.engine_running());
        assert!(!p.socket_access);
        assert_eq!(p.arch, "x86_64");
        assert_eq!(p.os.id, "debian");
        assert_eq!(
            p.names_and_addresses(),
            ["box", "box.lan", "192.168.1.5", "fe80::1"]
        );
        let bare = Probe::parse("uid=0\ndockerd=\ndocker_service=inactive\nsystemd=yes\n");
        assert!(bare.root && !bare.has_engine() && !bare.engine_running());
        let garbage = Probe::parse("garbage\0\n==\n");
        assert!(!garbage.root && !garbage.has_engine() && garbage.os.id.is_empty());
    }
}
