//! Networks between machines (`rmachine network create|ls|inspect|rm`): one folder per
//! network under `networks/`, with `network.toml` (the subnet and each member machine's
//! stable address) beside the switch's socket and log. A machine on a network gets a
//! second NIC with a MAC derived from the network's and the machine's names and the
//! address the network gave it when it joined; the address stays its own until it leaves
//! (`rmachine rm`, or `config set networks`), so peers' names never need to move.
//!
//! The switch (one process per network, `rmachine network-switch NAME`) is started by the
//! host agent of the first member that starts, and ends by itself once its last port has
//! been gone for a while.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::paths::Paths;
use crate::store::{validate_name, write_atomic};

/// Version of the `network.toml` format.
pub const NETWORK_VERSION: u32 = 1;

/// The first default subnet, `192.168.105.0/24`; each new network without `--subnet`
/// takes the next free /24 (106, 107, …). Away from QEMU's and passt's user-mode
/// 10.0.2.0/24 and from Docker's default address pools (172.17.0.0/16 and up for bridges,
/// 10.0.0.0/8 for swarm overlays).
const DEFAULT_SUBNET_BASE: [u8; 3] = [192, 168, 105];

/// `network.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkFile {
    pub version: u32,
    /// `a.b.c.d/len`, IPv4, prefix 16 to 29.
    pub subnet: String,
    /// Member machines and their addresses on the network.
    #[serde(default)]
    pub members: BTreeMap<String, Ipv4Addr>,
}

/// A network as found on disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Network {
    pub name: String,
    pub subnet: Subnet,
    pub members: BTreeMap<String, Ipv4Addr>,
    /// The switch's socket, where each member's second NIC connects.
    pub socket: PathBuf,
}

/// An IPv4 subnet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Subnet {
    pub base: Ipv4Addr,
    pub prefix_len: u8,
}

/// One machine's NIC on a network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Attachment {
    pub network: String,
    pub mac: String,
    pub address: Ipv4Addr,
    pub prefix_len: u8,
    pub socket: PathBuf,
}

/// Why a network operation failed.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("invalid network name {0:?}: use 1-40 characters a-z, 0-9, '-' or '_', starting with a letter or digit")]
    InvalidName(String),
    #[error("no network named {0:?} (see `rmachine network ls`)")]
    NotFound(String),
    #[error("network {0:?} already exists")]
    Exists(String),
    #[error("invalid subnet {subnet:?}: {why}")]
    InvalidSubnet { subnet: String, why: &'static str },
    #[error("subnet {subnet} overlaps network {other}'s {other_subnet}")]
    Overlap {
        subnet: String,
        other: String,
        other_subnet: String,
    },
    #[error("network {name:?} is used by {members}; remove them from it first (`rmachine config set networks … -m NAME`)")]
    InUse { name: String, members: String },
    #[error("network {0:?} has no free address left")]
    Full(String),
    #[error("{path} is not valid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> NetworkError {
    let path = path.to_path_buf();
    move |source| NetworkError::Io { what, path, source }
}

impl Subnet {
    /// Parses `a.b.c.d/len` (the base is masked).
    pub fn parse(text: &str) -> Result<Subnet, NetworkError> {
        let invalid = |why| NetworkError::InvalidSubnet {
            subnet: text.to_string(),
            why,
        };
        let (addr, len) = text
            .split_once('/')
            .ok_or(invalid("write it as a.b.c.d/len"))?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| invalid("not an IPv4 address"))?;
        let prefix_len: u8 = len
            .parse()
            .map_err(|_| invalid("the length is not a number"))?;
        if !(16..=29).contains(&prefix_len) {
            return Err(invalid("the prefix length must be 16 to 29"));
        }
        let subnet = Subnet {
            base: Ipv4Addr::from(u32::from(addr) & mask(prefix_len)),
            prefix_len,
        };
        let user_mode = Subnet {
            base: Ipv4Addr::new(10, 0, 2, 0),
            prefix_len: 24,
        };
        if subnet.overlaps(&user_mode) {
            return Err(invalid(
                "it overlaps 10.0.2.0/24, every machine's user-mode network",
            ));
        }
        Ok(subnet)
    }

    fn first(&self) -> u32 {
        u32::from(self.base)
    }

    fn last(&self) -> u32 {
        self.first() | !mask(self.prefix_len)
    }

    pub fn overlaps(&self, other: &Subnet) -> bool {
        self.first() <= other.last() && other.first() <= self.last()
    }

    pub fn contains(&self, addr: Ipv4Addr) -> bool {
        (self.first()..=self.last()).contains(&u32::from(addr))
    }

    /// Host addresses members get: from .2 (the .1 is left for a gateway a user may add)
    /// to the one before broadcast.
    fn hosts(&self) -> impl Iterator<Item = Ipv4Addr> {
        (self.first() + 2..self.last()).map(Ipv4Addr::from)
    }
}

impl std::fmt::Display for Subnet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.base, self.prefix_len)
    }
}

fn mask(prefix_len: u8) -> u32 {
    u32::MAX
        .checked_shl(32 - u32::from(prefix_len))
        .unwrap_or(0)
}

/// The MAC of `machine`'s NIC on `network`: stable, unicast, locally administered.
pub fn mac(network: &str, machine: &str) -> String {
    let digest = Sha256::digest(format!("{network}\0{machine}").as_bytes());
    format!(
        "02:72:6d:{:02x}:{:02x}:{:02x}",
        digest[0], digest[1], digest[2]
    )
}

/// The networks of one rmachine home.
#[derive(Debug, Clone)]
pub struct Networks {
    dir: PathBuf,
}

impl Networks {
    pub fn new(paths: &Paths) -> Networks {
        Networks {
            dir: paths.home().join("networks"),
        }
    }

    fn folder(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn file(&self, name: &str) -> PathBuf {
        self.folder(name).join("network.toml")
    }

    /// The switch's unix socket.
    pub fn socket(&self, name: &str) -> PathBuf {
        self.folder(name).join("switch.sock")
    }

    /// The switch's log.
    pub fn log(&self, name: &str) -> PathBuf {
        self.folder(name).join("switch.log")
    }

    /// The running switch's process (a [`crate::sys::process::ProcessId`] as JSON).
    pub fn pid_file(&self, name: &str) -> PathBuf {
        self.folder(name).join("switch.pid")
    }

    /// Whether the network's switch process runs (by its pid file: PID and start time).
    pub fn switch_running(&self, name: &str) -> bool {
        std::fs::read(self.pid_file(name))
            .ok()
            .and_then(|bytes| serde_json::from_slice::<crate::sys::process::ProcessId>(&bytes).ok())
            .is_some_and(|id| id.is_alive())
    }

    /// The lock a host agent holds while it starts the switch.
    pub fn lock_file(&self, name: &str) -> PathBuf {
        self.folder(name).join("switch.lock")
    }

    fn check_name(name: &str) -> Result<(), NetworkError> {
        validate_name(name).map_err(|_| NetworkError::InvalidName(name.to_string()))
    }

    /// Creates a network; without `subnet`, the next free default /24.
    pub fn create(&self, name: &str, subnet: Option<&str>) -> Result<Network, NetworkError> {
        Self::check_name(name)?;
        if self.file(name).exists() {
            return Err(NetworkError::Exists(name.to_string()));
        }
        let existing = self.list()?;
        let subnet = match subnet {
            Some(text) => {
                let subnet = Subnet::parse(text)?;
                if let Some(other) = existing.iter().find(|n| n.subnet.overlaps(&subnet)) {
                    return Err(NetworkError::Overlap {
                        subnet: subnet.to_string(),
                        other: other.name.clone(),
                        other_subnet: other.subnet.to_string(),
                    });
                }
                subnet
            }
            None => (DEFAULT_SUBNET_BASE[2]..=254)
                .map(|c| Subnet {
                    base: Ipv4Addr::new(DEFAULT_SUBNET_BASE[0], DEFAULT_SUBNET_BASE[1], c, 0),
                    prefix_len: 24,
                })
                .find(|s| existing.iter().all(|n| !n.subnet.overlaps(s)))
                .ok_or(NetworkError::Full("(all default subnets taken)".into()))?,
        };
        let folder = self.folder(name);
        std::fs::create_dir_all(&folder).map_err(io("cannot create", &folder))?;
        self.write(
            name,
            &NetworkFile {
                version: NETWORK_VERSION,
                subnet: subnet.to_string(),
                members: BTreeMap::new(),
            },
        )?;
        self.load(name)
    }

    fn write(&self, name: &str, file: &NetworkFile) -> Result<(), NetworkError> {
        let path = self.file(name);
        let text = toml::to_string(file).expect("network file serializes");
        write_atomic(&path, text.as_bytes()).map_err(io("cannot write", &path))
    }

    /// Loads a network.
    pub fn load(&self, name: &str) -> Result<Network, NetworkError> {
        Self::check_name(name)?;
        let path = self.file(name);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(NetworkError::NotFound(name.to_string()))
            }
            Err(e) => return Err(io("cannot read", &path)(e)),
        };
        let parse = |message: String| NetworkError::Parse {
            path: path.clone(),
            message,
        };
        let file: NetworkFile = toml::from_str(&text).map_err(|e| parse(e.to_string()))?;
        if file.version > NETWORK_VERSION {
            return Err(parse(format!(
                "format version {} is newer than this rmachine's {NETWORK_VERSION}",
                file.version
            )));
        }
        let subnet = Subnet::parse(&file.subnet).map_err(|e| parse(e.to_string()))?;
        if let Some((m, a)) = file.members.iter().find(|(_, a)| !subnet.contains(**a)) {
            return Err(parse(format!("{m}'s address {a} is outside {subnet}")));
        }
        Ok(Network {
            name: name.to_string(),
            subnet,
            members: file.members,
            socket: self.socket(name),
        })
    }

    /// Every network, by name.
    pub fn list(&self) -> Result<Vec<Network>, NetworkError> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io("cannot list", &self.dir)(e)),
        };
        let mut names: Vec<String> = entries
            .flatten()
            .filter(|e| e.path().join("network.toml").exists())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names.iter().map(|n| self.load(n)).collect()
    }

    /// Removes a network no machine uses.
    pub fn remove(&self, name: &str) -> Result<(), NetworkError> {
        let network = self.load(name)?;
        if !network.members.is_empty() {
            return Err(NetworkError::InUse {
                name: name.to_string(),
                members: network
                    .members
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        let folder = self.folder(name);
        std::fs::remove_dir_all(&folder).map_err(io("cannot remove", &folder))
    }

    /// Makes `machine` a member of `name` (keeping the address it has) and returns its
    /// NIC there.
    pub fn join(&self, name: &str, machine: &str) -> Result<Attachment, NetworkError> {
        let network = self.load(name)?;
        let address = match network.members.get(machine) {
            Some(a) => *a,
            None => {
                let taken: Vec<Ipv4Addr> = network.members.values().copied().collect();
                let address = network
                    .subnet
                    .hosts()
                    .find(|a| !taken.contains(a))
                    .ok_or_else(|| NetworkError::Full(name.to_string()))?;
                let mut members = network.members.clone();
                members.insert(machine.to_string(), address);
                self.write(
                    name,
                    &NetworkFile {
                        version: NETWORK_VERSION,
                        subnet: network.subnet.to_string(),
                        members,
                    },
                )?;
                address
            }
        };
        Ok(Attachment {
            network: name.to_string(),
            mac: mac(name, machine),
            address,
            prefix_len: network.subnet.prefix_len,
            socket: network.socket,
        })
    }

    /// The members of `networks` with their addresses (a name once, at its first
    /// network's address): the names a machine on those networks resolves.
    pub fn peers(&self, networks: &[String]) -> Result<Vec<(String, Ipv4Addr)>, NetworkError> {
        let mut peers: Vec<(String, Ipv4Addr)> = Vec::new();
        for name in networks {
            for (member, address) in self.load(name)?.members {
                if !peers.iter().any(|(m, _)| *m == member) {
                    peers.push((member, address));
                }
            }
        }
        Ok(peers)
    }

    /// Takes `machine` off every network except `keep`.
    pub fn leave_all_but(&self, machine: &str, keep: &[String]) -> Result<(), NetworkError> {
        for network in self.list()? {
            if network.members.contains_key(machine) && !keep.contains(&network.name) {
                let mut members = network.members.clone();
                members.remove(machine);
                self.write(
                    &network.name,
                    &NetworkFile {
                        version: NETWORK_VERSION,
                        subnet: network.subnet.to_string(),
                        members,
                    },
                )?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn networks() -> (tempfile::TempDir, Networks) {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::with_roots(dir.path().join("home"), dir.path().join("cache"));
        let n = Networks::new(&paths);
        (dir, n)
    }

    #[test]
    fn test_subnets_parse_mask_and_refuse_what_cannot_work() {
        let s = Subnet::parse("192.168.50.7/24").unwrap();
        assert_eq!(s.to_string(), "192.168.50.0/24");
        assert!(s.contains(Ipv4Addr::new(192, 168, 50, 254)));
        assert!(!s.contains(Ipv4Addr::new(192, 168, 51, 1)));
        for bad in [
            "192.168.50.0",
            "fe80::/64",
            "10.0.0.0/8",
            "10.0.2.0/24",
            "1.2.3.4/x",
        ] {
            assert!(Subnet::parse(bad).is_err(), "{bad}");
        }
        assert!(
            Subnet::parse("10.0.0.0/16").is_err(),
            "overlaps 10.0.2.0/24"
        );
        assert!(Subnet::parse("10.1.0.0/16").is_ok());
    }

    #[test]
    fn test_members_get_stable_addresses_and_macs() {
        let (_d, n) = networks();
        let net = n.create("swarm", None).unwrap();
        assert_eq!(net.subnet.to_string(), "192.168.105.0/24");
        let a = n.join("swarm", "m1").unwrap();
        let b = n.join("swarm", "m2").unwrap();
        assert_eq!(a.address, Ipv4Addr::new(192, 168, 105, 2));
        assert_eq!(b.address, Ipv4Addr::new(192, 168, 105, 3));
        assert_eq!(n.join("swarm", "m1").unwrap(), a, "joining again keeps it");
        assert_ne!(a.mac, b.mac);
        assert_eq!(a.mac, mac("swarm", "m1"));
        assert!(a.mac.starts_with("02:"), "locally administered unicast");
        assert_eq!(
            n.peers(&["swarm".into()]).unwrap(),
            [("m1".to_string(), a.address), ("m2".to_string(), b.address)]
        );
        // A freed address is given again.
        n.leave_all_but("m1", &[]).unwrap();
        let c = n.join("swarm", "m3").unwrap();
        assert_eq!(c.address, Ipv4Addr::new(192, 168, 105, 2));
    }

    #[test]
    fn test_create_list_and_remove_refused_while_used() {
        let (_d, n) = networks();
        n.create("a", None).unwrap();
        let b = n.create("b", None).unwrap();
        assert_eq!(b.subnet.to_string(), "192.168.106.0/24");
        assert!(matches!(n.create("a", None), Err(NetworkError::Exists(_))));
        assert!(matches!(
            n.create("c", Some("192.168.105.128/25")),
            Err(NetworkError::Overlap { .. })
        ));
        assert!(matches!(
            n.create("Bad/Name", None),
            Err(NetworkError::InvalidName(_))
        ));
        n.join("a", "m1").unwrap();
        let err = n.remove("a").unwrap_err().to_string();
        assert!(err.contains("m1"), "{err}");
        n.leave_all_but("m1", &["b".into()]).unwrap();
        n.remove("a").unwrap();
        let names: Vec<String> = n.list().unwrap().into_iter().map(|n| n.name).collect();
        assert_eq!(names, ["b"]);
        assert!(matches!(n.load("a"), Err(NetworkError::NotFound(_))));
    }

    #[test]
    fn test_switch_running_follows_its_pid_file() {
        let (_d, n) = networks();
        n.create("a", None).unwrap();
        assert!(!n.switch_running("a"), "no pid file");
        let me = crate::sys::process::ProcessId::current();
        std::fs::write(n.pid_file("a"), serde_json::to_vec(&me).unwrap()).unwrap();
        assert!(n.switch_running("a"));
        let gone = crate::sys::process::ProcessId {
            started: me.started + 1,
            ..me
        };
        std::fs::write(n.pid_file("a"), serde_json::to_vec(&gone).unwrap()).unwrap();
        assert!(!n.switch_running("a"), "another process with that PID");
        std::fs::write(n.pid_file("a"), "garbage").unwrap();
        assert!(!n.switch_running("a"));
    }

    #[test]
    fn test_a_full_network_says_so_and_a_broken_file_is_named() {
        let (_d, n) = networks();
        n.create("tiny", Some("192.168.200.0/29")).unwrap();
        for i in 0..5 {
            n.join("tiny", &format!("m{i}")).unwrap();
        }
        assert!(matches!(n.join("tiny", "m9"), Err(NetworkError::Full(_))));
        std::fs::write(n.file("tiny"), "version = 1\nsubnet = [").unwrap();
        let err = n.load("tiny").unwrap_err().to_string();
        assert!(err.contains("network.toml"), "{err}");
    }
}
