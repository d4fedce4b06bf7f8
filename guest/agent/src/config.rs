//! The boot configuration: found on the config disk the host attaches, or defaults when
//! there is none (vsock only, hostname `rmachine`, data on /dev/vdb).

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use rmachine_protocol::config_disk::{ConfigDiskError, GuestConfig, MAX_SIZE};
use rmachine_protocol::net::{parse_mac, HostEntry, NetworkNic, MAX_HOSTS};
use rmachine_protocol::PROTOCOL_VERSION;
use tracing::{debug, info, warn};

use crate::network::StaticNic;

pub const DEFAULT_HOSTNAME: &str = "rmachine";
pub const DEFAULT_DATA_DISK: &str = "/dev/vdb";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot list block devices in {path}")]
    List {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// What the agent boots with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootConfig {
    /// The device the config came from, `None` when defaults are used.
    pub config_device: Option<PathBuf>,
    /// Token of the TCP carrier; `None` serves vsock only.
    pub token: Option<String>,
    pub hostname: String,
    pub data_disk: String,
    /// Host time when the config was written, ns since the epoch.
    pub host_time_unix_ns: Option<i64>,
    /// The host as containers reach it (`host.docker.internal`).
    pub host_addr: Option<String>,
    /// Shared host folders (virtio-fs) to mount at their host paths.
    pub mounts: Vec<rmachine_protocol::config_disk::Mount>,
    /// MAC of the user-mode NIC, when the config disk names it.
    pub primary_mac: Option<[u8; 6]>,
    /// NICs on networks between machines (valid ones only, one per MAC).
    pub networks: Vec<StaticNic>,
    /// Peer names for /etc/hosts (valid ones only).
    pub hosts: Vec<HostEntry>,
    /// The engine's settings (daemon.json), as the host checked them.
    pub engine: Option<serde_json::Map<String, serde_json::Value>>,
}

impl BootConfig {
    pub fn defaults() -> BootConfig {
        BootConfig {
            config_device: None,
            token: None,
            hostname: DEFAULT_HOSTNAME.into(),
            data_disk: DEFAULT_DATA_DISK.into(),
            host_time_unix_ns: None,
            host_addr: None,
            mounts: Vec::new(),
            primary_mac: None,
            networks: Vec::new(),
            hosts: Vec::new(),
            engine: None,
        }
    }

    fn from_disk(device: PathBuf, config: GuestConfig) -> BootConfig {
        if config.version != PROTOCOL_VERSION {
            warn!(
                disk = config.version,
                agent = PROTOCOL_VERSION,
                "config disk is of another protocol version; using it anyway"
            );
        }
        let hostname = if valid_hostname(&config.hostname) {
            config.hostname
        } else {
            warn!(hostname = %config.hostname, "invalid hostname on the config disk; using {DEFAULT_HOSTNAME}");
            DEFAULT_HOSTNAME.into()
        };
        let data_disk = if config.data_disk.is_empty() {
            DEFAULT_DATA_DISK.into()
        } else {
            config.data_disk
        };
        let primary_mac = config.primary_mac.as_deref().and_then(|text| {
            let mac = parse_mac(text);
            if mac.is_none() {
                warn!(
                    mac = text,
                    "invalid primary MAC on the config disk; ignored"
                );
            }
            mac
        });
        let networks = checked_networks(&config.networks, primary_mac);
        let hosts = checked_hosts(config.hosts);
        BootConfig {
            config_device: Some(device),
            token: Some(config.token).filter(|t| !t.is_empty()),
            hostname,
            data_disk,
            host_time_unix_ns: Some(config.host_time_unix_ns).filter(|&t| t > 0),
            host_addr: config
                .host_addr
                .filter(|a| a.parse::<std::net::IpAddr>().is_ok()),
            mounts: config.mounts,
            primary_mac,
            networks,
            hosts,
            engine: config.engine,
        }
    }
}

/// The config disk's NICs that can be configured: invalid ones, those with the primary's
/// MAC and repeated MACs are left out (with a warning), the rest keep their order.
fn checked_networks(nics: &[NetworkNic], primary_mac: Option<[u8; 6]>) -> Vec<StaticNic> {
    let mut out: Vec<StaticNic> = Vec::new();
    for nic in nics {
        match nic.parse() {
            Ok(parsed) if Some(parsed.mac) == primary_mac => {
                warn!(network = %nic.network, mac = %nic.mac, "network NIC has the primary MAC; ignored")
            }
            Ok(parsed) if out.iter().any(|n| n.nic.mac == parsed.mac) => {
                warn!(network = %nic.network, mac = %nic.mac, "network NIC MAC repeated; ignored")
            }
            Ok(parsed) => out.push(StaticNic {
                network: nic.network.clone(),
                nic: parsed,
            }),
            Err(e) => {
                warn!(network = %nic.network, error = %e, "invalid network NIC on the config disk; ignored")
            }
        }
    }
    out
}

/// The config disk's valid host entries (at most [`MAX_HOSTS`]); the others are logged.
fn checked_hosts(entries: Vec<HostEntry>) -> Vec<HostEntry> {
    if entries.len() > MAX_HOSTS {
        warn!(
            count = entries.len(),
            "too many host entries on the config disk; keeping the first {MAX_HOSTS}"
        );
    }
    entries
        .into_iter()
        .take(MAX_HOSTS)
        .filter(|entry| match entry.parse() {
            Ok(_) => true,
            Err(e) => {
                warn!(error = %e, "invalid host entry on the config disk; ignored");
                false
            }
        })
        .collect()
}

/// A hostname the kernel and resolvers accept: 1 to 64 letters, digits, `-` and `.`.
fn valid_hostname(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && !name.starts_with(['-', '.'])
}

/// Reads up to the first 64 KiB of a device.
fn read_head(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut head = Vec::with_capacity(MAX_SIZE);
    File::open(path)?
        .take(MAX_SIZE as u64)
        .read_to_end(&mut head)?;
    Ok(head)
}

/// Finds the config disk among the virtio disks listed in `sys_block` (`vd*`), opening
/// them under `dev`. `Ok(None)` when no disk carries the magic.
pub fn find(sys_block: &Path, dev: &Path) -> Result<Option<(PathBuf, GuestConfig)>, ConfigError> {
    let entries = std::fs::read_dir(sys_block).map_err(|source| ConfigError::List {
        path: sys_block.display().to_string(),
        source,
    })?;
    let mut names: Vec<String> = entries
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("vd"))
        .collect();
    names.sort();
    for name in names {
        let device = dev.join(&name);
        let head = match read_head(&device) {
            Ok(head) => head,
            Err(e) => {
                debug!(device = %device.display(), error = %e, "cannot read disk");
                continue;
            }
        };
        match GuestConfig::decode(&head) {
            Ok(config) => return Ok(Some((device, config))),
            Err(ConfigDiskError::NoMagic) => {
                debug!(device = %device.display(), "not a config disk")
            }
            Err(e) => warn!(device = %device.display(), error = %e, "config disk is unreadable"),
        }
    }
    Ok(None)
}

/// The boot configuration of this guest; defaults (logged) when there is no config disk.
pub fn load() -> BootConfig {
    match find(Path::new("/sys/block"), Path::new("/dev")) {
        Ok(Some((device, config))) => {
            info!(device = %device.display(), hostname = %config.hostname, data_disk = %config.data_disk, "config disk read");
            BootConfig::from_disk(device, config)
        }
        Ok(None) => {
            warn!("no config disk: serving vsock only (no TCP carrier), hostname {DEFAULT_HOSTNAME}, data disk {DEFAULT_DATA_DISK}");
            BootConfig::defaults()
        }
        Err(e) => {
            warn!(error = %e, "cannot look for a config disk: using defaults (vsock only, data disk {DEFAULT_DATA_DISK})");
            BootConfig::defaults()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(token: &str, hostname: &str) -> GuestConfig {
        GuestConfig {
            version: PROTOCOL_VERSION,
            token: token.into(),
            hostname: hostname.into(),
            data_disk: "/dev/vdc".into(),
            host_time_unix_ns: 1_700_000_000_000_000_000,
            host_addr: None,
            mounts: Vec::new(),
            ..Default::default()
        }
    }

    /// A fake /sys/block and /dev with the given disks.
    fn fake_disks(disks: &[(&str, Vec<u8>)]) -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("sys/block/loop0")).unwrap();
        std::fs::create_dir_all(root.path().join("dev")).unwrap();
        std::fs::write(
            root.path().join("dev/loop0"),
            sample("loop", "loop").encode(),
        )
        .unwrap();
        for (name, bytes) in disks {
            std::fs::create_dir_all(root.path().join("sys/block").join(name)).unwrap();
            std::fs::write(root.path().join("dev").join(name), bytes).unwrap();
        }
        root
    }

    #[test]
    fn test_config_disk_is_found_among_virtio_disks() {
        let root = fake_disks(&[
            ("vda", vec![0xE2; 8192]),
            ("vdb", vec![0; 100]),
            ("vdc", sample("00ff", "box").encode()),
        ]);
        let (device, config) = find(&root.path().join("sys/block"), &root.path().join("dev"))
            .unwrap()
            .unwrap();
        assert_eq!(device, root.path().join("dev/vdc"));
        assert_eq!(config.token, "00ff");
        let boot = BootConfig::from_disk(device, config);
        assert_eq!(
            (
                boot.token.as_deref(),
                boot.hostname.as_str(),
                boot.data_disk.as_str()
            ),
            (Some("00ff"), "box", "/dev/vdc")
        );
    }

    #[test]
    fn test_no_config_disk_is_none() {
        // loop0 carries a config but is not a virtio disk: it must be ignored.
        let root = fake_disks(&[("vda", vec![0; 4096])]);
        assert_eq!(
            find(&root.path().join("sys/block"), &root.path().join("dev")).unwrap(),
            None
        );
        assert!(find(&root.path().join("nonexistent"), &root.path().join("dev")).is_err());
        let defaults = BootConfig::defaults();
        assert_eq!(
            (
                defaults.token,
                defaults.hostname.as_str(),
                defaults.data_disk.as_str()
            ),
            (None, "rmachine", "/dev/vdb")
        );
    }

    #[test]
    fn test_networks_and_hosts_are_checked() {
        let nic = |network: &str, mac: &str, address: &str| NetworkNic {
            network: network.into(),
            mac: mac.into(),
            address: address.into(),
            mtu: None,
        };
        let host = |name: &str, ip: &str| HostEntry {
            name: name.into(),
            ip: ip.into(),
        };
        let config = GuestConfig {
            primary_mac: Some("52:54:00:12:34:56".into()),
            networks: vec![
                nic("a", "52:54:00:aa:00:02", "192.168.127.2/24"),
                nic("bad", "52:54:00:aa:00:03", "192.168.128.2"),
                nic("primary", "52:54:00:12:34:56", "192.168.129.2/24"),
                nic("again", "52:54:00:AA:00:02", "192.168.130.2/24"),
                nic("b", "52:54:00:aa:00:04", "fd00::2/64"),
            ],
            hosts: vec![
                host("peer", "192.168.127.3"),
                host("bad name", "192.168.127.4"),
                host("v6", "fd00::3"),
            ],
            ..sample("00ff", "box")
        };
        let boot = BootConfig::from_disk(PathBuf::from("/dev/vdc"), config);
        assert_eq!(boot.primary_mac, Some([0x52, 0x54, 0, 0x12, 0x34, 0x56]));
        let networks: Vec<&str> = boot.networks.iter().map(|n| n.network.as_str()).collect();
        assert_eq!(networks, ["a", "b"]);
        assert_eq!(boot.networks[0].nic.prefix_len, 24);
        let names: Vec<&str> = boot.hosts.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names, ["peer", "v6"]);
        let config = GuestConfig {
            primary_mac: Some("nonsense".into()),
            ..sample("00ff", "box")
        };
        let boot = BootConfig::from_disk(PathBuf::from("/dev/vdc"), config);
        assert_eq!(boot.primary_mac, None);
        assert!(boot.networks.is_empty() && boot.hosts.is_empty());
    }

    #[test]
    fn test_empty_token_and_bad_hostname_fall_back() {
        let boot = BootConfig::from_disk(PathBuf::from("/dev/vdc"), sample("", "bad host\n"));
        assert_eq!(boot.token, None);
        assert_eq!(boot.hostname, DEFAULT_HOSTNAME);
        assert!(valid_hostname("rmachine-default.local"));
        assert!(!valid_hostname(&"a".repeat(65)));
        assert!(!valid_hostname("-x"));
    }
}
