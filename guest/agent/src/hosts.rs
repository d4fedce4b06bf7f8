//! The guest's `/etc/hosts`: localhost, this machine's name, and the names of its peers
//! on networks between machines (from the config disk at boot, then from the host
//! agent's `set_hosts` requests as peers start and stop).
//!
//! The root filesystem is read-only, so the agent writes the file on the `/run` tmpfs
//! ([`HOSTS_FILE`]) and bind-mounts it over `/etc/hosts` once at boot. Later updates
//! rewrite that file in place: a bind mount holds the inode, so a rename would not be
//! seen. Resolvers re-read the file on each lookup (glibc) or when it changes (Go, so
//! dockerd), so new names work without restarting anything.

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use rmachine_protocol::net::{HostEntry, NetError};
use tracing::{debug, info};

use crate::mounts::{self, MountError};

/// The file the agent writes (tmpfs).
pub const HOSTS_FILE: &str = "/run/rmachine/hosts";

/// Where it is bind-mounted.
pub const ETC_HOSTS: &str = "/etc/hosts";

/// The name this machine gets when it has no address on a network (Debian's custom).
const LOOPBACK_NAME_ADDR: &str = "127.0.1.1";

#[derive(Debug, thiserror::Error)]
pub enum HostsError {
    #[error("invalid host entry")]
    Invalid(#[source] NetError),
    #[error("cannot write {path}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot put the hosts file in place")]
    Bind(#[source] MountError),
}

/// The hosts file of this guest.
pub struct HostsFile {
    path: PathBuf,
    hostname: String,
    /// This machine's addresses on its networks.
    own: Vec<IpAddr>,
    /// Serializes writers (boot, concurrent `set_hosts`).
    write_lock: Mutex<()>,
}

impl HostsFile {
    pub fn new(path: PathBuf, hostname: &str, own: Vec<IpAddr>) -> HostsFile {
        HostsFile {
            path,
            hostname: hostname.to_string(),
            own,
            write_lock: Mutex::new(()),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Checks every entry, then rewrites the file with them; returns how many peer
    /// lines it holds. One invalid entry refuses all and leaves the file as it was.
    pub fn write(&self, entries: &[HostEntry]) -> Result<usize, HostsError> {
        let ips = HostEntry::parse_all(entries).map_err(HostsError::Invalid)?;
        let peers: Vec<(&str, IpAddr)> = entries.iter().map(|e| e.name.as_str()).zip(ips).collect();
        let (text, count) = render(&self.hostname, &self.own, &peers);
        let _guard = self
            .write_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // In place (same inode): the bind mount over /etc/hosts shows this file.
        std::fs::write(&self.path, text).map_err(|source| HostsError::Write {
            path: self.path.display().to_string(),
            source,
        })?;
        debug!(path = %self.path.display(), peers = count, "hosts file written");
        Ok(count)
    }
}

/// Writes the boot entries and bind-mounts the file over `/etc/hosts` (PID 1 only).
pub fn install(file: &HostsFile, entries: &[HostEntry]) -> Result<usize, HostsError> {
    let count = file.write(entries)?;
    if mounts::is_mounted(ETC_HOSTS) {
        debug!("{ETC_HOSTS} already in place");
    } else {
        let source = file.path().display().to_string();
        mounts::bind(&source, ETC_HOSTS).map_err(HostsError::Bind)?;
    }
    info!(peers = count, "{ETC_HOSTS} written");
    Ok(count)
}

/// The file's text and the number of peer lines in it. Peers named like this machine
/// are skipped (the host may send a network's whole member list), and so are repeated
/// names (the first wins, as it would in a resolver).
pub fn render(hostname: &str, own: &[IpAddr], peers: &[(&str, IpAddr)]) -> (String, usize) {
    let mut text = String::from(
        "# written by rmachine-agent\n\
         127.0.0.1\tlocalhost\n\
         ::1\tlocalhost ip6-localhost ip6-loopback\n",
    );
    if own.is_empty() {
        text.push_str(&format!("{LOOPBACK_NAME_ADDR}\t{hostname}\n"));
    }
    for addr in own {
        text.push_str(&format!("{addr}\t{hostname}\n"));
    }
    let mut seen: HashSet<String> = HashSet::from([hostname.to_ascii_lowercase()]);
    let mut count = 0;
    for (name, ip) in peers {
        if seen.insert(name.to_ascii_lowercase()) {
            text.push_str(&format!("{ip}\t{name}\n"));
            count += 1;
        }
    }
    (text, count)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn entry(name: &str, ip: &str) -> HostEntry {
        HostEntry {
            name: name.into(),
            ip: ip.into(),
        }
    }

    #[test]
    fn test_render_lists_localhost_this_machine_and_peers() {
        let own = ["192.168.127.2".parse().unwrap()];
        let peers = [
            ("worker-1", "192.168.127.3".parse().unwrap()),
            ("manager", "192.168.127.9".parse().unwrap()),
            ("Worker-1", "192.168.127.4".parse().unwrap()),
            ("registry", "fd00::5".parse().unwrap()),
        ];
        let (text, count) = render("manager", &own, &peers);
        assert_eq!(
            text,
            "# written by rmachine-agent\n\
             127.0.0.1\tlocalhost\n\
             ::1\tlocalhost ip6-localhost ip6-loopback\n\
             192.168.127.2\tmanager\n\
             192.168.127.3\tworker-1\n\
             fd00::5\tregistry\n"
        );
        assert_eq!(count, 2);
    }

    #[test]
    fn test_render_without_networks_names_this_machine_on_loopback() {
        let (text, count) = render("box", &[], &[]);
        assert!(text.ends_with("::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\tbox\n"));
        assert_eq!(count, 0);
    }

    #[test]
    fn test_write_rewrites_in_place_and_refuses_invalid_lists_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hosts");
        let file = HostsFile::new(path.clone(), "box", Vec::new());
        assert_eq!(file.write(&[entry("a", "10.0.0.1")]).unwrap(), 1);
        let inode = std::fs::metadata(&path).unwrap().ino();
        assert_eq!(
            file.write(&[entry("a", "10.0.0.1"), entry("b", "10.0.0.2")])
                .unwrap(),
            2
        );
        assert_eq!(std::fs::metadata(&path).unwrap().ino(), inode);
        let before = std::fs::read_to_string(&path).unwrap();
        assert!(before.contains("10.0.0.2\tb\n"), "{before}");
        for bad in [
            vec![
                entry("c", "10.0.0.3"),
                entry("evil\n1.2.3.4 bank", "10.0.0.4"),
            ],
            vec![entry("c", "not-an-ip")],
            vec![entry("c", "10.0.0.3"); rmachine_protocol::net::MAX_HOSTS + 1],
        ] {
            assert!(matches!(file.write(&bad), Err(HostsError::Invalid(_))));
            assert_eq!(std::fs::read_to_string(&path).unwrap(), before);
        }
        assert_eq!(file.write(&[]).unwrap(), 0);
        assert!(!std::fs::read_to_string(&path).unwrap().contains("10.0.0.1"));
    }
}
