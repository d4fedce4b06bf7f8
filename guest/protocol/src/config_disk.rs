//! The config disk: a small read-only raw disk that the host attaches to every machine
//! and the agent reads at boot. It carries what the guest must know before it can talk
//! to the host (the token of the TCP carrier, the hostname, which disk holds the data).
//! It is a disk rather than the kernel command line because `/proc/cmdline` is readable
//! from every container.
//!
//! Layout: the line `RMACHINE-CONFIG\n`, one JSON object, a `\n`, then zero bytes up to
//! a multiple of 4096 bytes.
//!
//! Compatibility: fields added after the first release have a serde default, so disks
//! written by older hosts still decode, and unknown fields are ignored, so older agents
//! read disks of newer hosts. Fields that are empty are not written at all, so a machine
//! without networks gets the same disk as before they existed.

use serde::{Deserialize, Serialize};

pub use crate::net::{HostEntry, NetworkNic};

/// First bytes of a config disk.
pub const MAGIC: &[u8] = b"RMACHINE-CONFIG\n";

/// Largest config disk the agent reads.
pub const MAX_SIZE: usize = 64 * 1024;

const ALIGN: usize = 4096;

/// A shared host folder (virtio-fs) to mount in the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    /// The virtio-fs tag.
    pub tag: String,
    /// Where to mount it in the guest (the same absolute path as on the host).
    pub guest_path: String,
    #[serde(default)]
    pub read_only: bool,
}

/// What the host tells the guest at boot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestConfig {
    /// Protocol version of the host that wrote it.
    pub version: u32,
    /// Secret the host presents on the TCP carrier (hex). Connections without it are
    /// closed.
    pub token: String,
    pub hostname: String,
    /// Block device of the data disk (formatted ext4 on first boot), e.g. `/dev/vdb`.
    pub data_disk: String,
    /// Host wall clock when the disk was written (ns since the epoch): a first guess for
    /// the guest clock until the host sends `sync_time`.
    pub host_time_unix_ns: i64,
    /// Address under which containers reach the host (`host.docker.internal`), if any.
    #[serde(default)]
    pub host_addr: Option<String>,
    #[serde(default)]
    pub mounts: Vec<Mount>,
    /// MAC address of the user-mode NIC (DHCP, the default route). `None`: the first
    /// virtio-net interface whose MAC no entry of `networks` has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_mac: Option<String>,
    /// NICs on networks between machines, configured statically (no default route).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<NetworkNic>,
    /// Peer machines' names for `/etc/hosts` (at most [`crate::net::MAX_HOSTS`]); the
    /// host agent keeps them current with [`crate::control::Request::SetHosts`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<HostEntry>,
    /// The engine's settings (`daemon.json`, a JSON object checked by the host): dockerd
    /// reads them from a file the agent writes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine: Option<serde_json::Map<String, serde_json::Value>>,
}

/// Why bytes were not a config disk.
#[derive(Debug, thiserror::Error)]
pub enum ConfigDiskError {
    #[error("no rmachine config magic at the start of the disk")]
    NoMagic,
    #[error("config disk is not terminated within {MAX_SIZE} bytes")]
    Unterminated,
    #[error("config disk JSON is invalid")]
    Json(#[source] serde_json::Error),
}

impl Default for GuestConfig {
    /// A config of this protocol version with every field empty: build one with
    /// `GuestConfig { hostname, token, ..Default::default() }` so that fields added later
    /// need no change at the call site.
    fn default() -> GuestConfig {
        GuestConfig {
            version: crate::PROTOCOL_VERSION,
            token: String::new(),
            hostname: String::new(),
            data_disk: String::new(),
            host_time_unix_ns: 0,
            host_addr: None,
            mounts: Vec::new(),
            primary_mac: None,
            networks: Vec::new(),
            hosts: Vec::new(),
            engine: None,
        }
    }
}

impl GuestConfig {
    /// The disk image bytes, padded to a multiple of 4096.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        // Plain data with string keys: serialization cannot fail.
        out.extend(serde_json::to_vec(self).expect("guest config always serializes"));
        out.push(b'\n');
        let padded = out.len().div_ceil(ALIGN) * ALIGN;
        out.resize(padded, 0);
        out
    }

    /// Reads a config from the start of a disk's bytes.
    pub fn decode(bytes: &[u8]) -> Result<GuestConfig, ConfigDiskError> {
        let rest = bytes.strip_prefix(MAGIC).ok_or(ConfigDiskError::NoMagic)?;
        let rest = &rest[..rest.len().min(MAX_SIZE)];
        let end = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or(ConfigDiskError::Unterminated)?;
        serde_json::from_slice(&rest[..end]).map_err(ConfigDiskError::Json)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> GuestConfig {
        GuestConfig {
            version: crate::PROTOCOL_VERSION,
            token: "00ff".into(),
            hostname: "default".into(),
            data_disk: "/dev/vdb".into(),
            host_time_unix_ns: 1_700_000_000_000_000_000,
            host_addr: Some("10.0.2.2".into()),
            mounts: vec![Mount {
                tag: "home".into(),
                guest_path: "/home/u".into(),
                read_only: false,
            }],
            primary_mac: None,
            networks: Vec::new(),
            hosts: Vec::new(),
            engine: None,
        }
    }

    fn with_network() -> GuestConfig {
        GuestConfig {
            primary_mac: Some("52:54:00:12:34:56".into()),
            networks: vec![NetworkNic {
                network: "swarm".into(),
                mac: "52:54:00:aa:00:02".into(),
                address: "192.168.127.2/24".into(),
                mtu: Some(1500),
            }],
            hosts: vec![HostEntry {
                name: "worker".into(),
                ip: "192.168.127.3".into(),
            }],
            engine: serde_json::json!({"insecure-registries": ["192.168.127.2:5000"]})
                .as_object()
                .cloned(),
            ..sample()
        }
    }

    #[test]
    fn test_config_disk_round_trip_and_padding() {
        let bytes = sample().encode();
        assert_eq!(bytes.len() % 4096, 0);
        assert_eq!(GuestConfig::decode(&bytes).unwrap(), sample());
    }

    #[test]
    fn test_config_disk_round_trip_with_networks() {
        let bytes = with_network().encode();
        assert_eq!(GuestConfig::decode(&bytes).unwrap(), with_network());
    }

    #[test]
    fn test_config_disk_without_networks_encodes_as_before() {
        // What a host of the first release wrote; it must decode, and a config without
        // networks must still encode to exactly these bytes.
        let old = concat!(
            r#"{"version":1,"token":"00ff","hostname":"default","data_disk":"/dev/vdb","#,
            r#""host_time_unix_ns":1700000000000000000,"host_addr":"10.0.2.2","#,
            r#""mounts":[{"tag":"home","guest_path":"/home/u","read_only":false}]}"#
        );
        let mut bytes = MAGIC.to_vec();
        bytes.extend(old.as_bytes());
        bytes.push(b'\n');
        bytes.resize(4096, 0);
        assert_eq!(GuestConfig::decode(&bytes).unwrap(), sample());
        assert_eq!(sample().encode(), bytes);
        // Older still: no host_addr, no mounts.
        let older =
            br#"{"version":1,"token":"","hostname":"h","data_disk":"","host_time_unix_ns":0}"#;
        let mut bytes = MAGIC.to_vec();
        bytes.extend(older);
        bytes.push(b'\n');
        let config = GuestConfig::decode(&bytes).unwrap();
        assert!(config.networks.is_empty() && config.hosts.is_empty());
        assert_eq!(config.primary_mac, None);
    }

    #[test]
    fn test_config_disk_ignores_fields_of_newer_hosts() {
        let mut value = serde_json::to_value(with_network()).unwrap();
        value["future"] = serde_json::json!({"x": 1});
        value["networks"][0]["vlan"] = 7.into();
        let mut bytes = MAGIC.to_vec();
        bytes.extend(serde_json::to_vec(&value).unwrap());
        bytes.push(b'\n');
        assert_eq!(GuestConfig::decode(&bytes).unwrap(), with_network());
    }

    #[test]
    fn test_config_disk_rejects_foreign_bytes() {
        assert!(matches!(
            GuestConfig::decode(&[0u8; 4096]),
            Err(ConfigDiskError::NoMagic)
        ));
        let mut unterminated = MAGIC.to_vec();
        unterminated.extend(vec![b'x'; 100]);
        assert!(matches!(
            GuestConfig::decode(&unterminated),
            Err(ConfigDiskError::Unterminated)
        ));
        let mut bad = MAGIC.to_vec();
        bad.extend(b"{not json}\n");
        assert!(matches!(
            GuestConfig::decode(&bad),
            Err(ConfigDiskError::Json(_))
        ));
    }
}
