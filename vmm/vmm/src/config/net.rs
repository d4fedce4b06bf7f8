//! The `net` section of the boot document: a virtio-net device and its host end.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{invalid, ConfigError};

/// Default MAC address of the guest (QEMU's first NIC).
pub const DEFAULT_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

/// The host end of the network device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetBackendKind {
    /// An existing TAP interface, named by `tap`.
    Tap,
    /// A running passt, reached at its unix socket `socket` (`passt --socket PATH`).
    Passt,
}

/// The virtio-net device:
/// `{"backend": "tap", "tap": "tap0"}` or `{"backend": "passt", "socket": "/run/passt.sock"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetConfig {
    /// Which host end carries the frames.
    pub backend: NetBackendKind,
    /// Name of an existing TAP interface (backend `tap` only).
    pub tap: Option<String>,
    /// passt's unix socket (backend `passt` only).
    pub socket: Option<PathBuf>,
    /// The guest's MAC address, `52:54:00:12:34:56` style. Default: [`DEFAULT_MAC`].
    pub mac: Option<String>,
    /// virtio-mmio slot. Default: the next free slot.
    pub slot: Option<u8>,
}

impl NetConfig {
    /// The guest's MAC address, with the default resolved.
    pub fn mac_bytes(&self) -> Result<[u8; 6], ConfigError> {
        match &self.mac {
            None => Ok(DEFAULT_MAC),
            Some(text) => parse_mac(text).ok_or_else(|| {
                invalid(
                    "net.mac",
                    format!("{text:?} is not a MAC address like 52:54:00:12:34:56"),
                )
            }),
        }
        .and_then(|mac| {
            if mac[0] & 1 != 0 {
                Err(invalid("net.mac", "a multicast address cannot be a NIC's"))
            } else if mac == [0; 6] {
                Err(invalid("net.mac", "the all-zero address is not valid"))
            } else {
                Ok(mac)
            }
        })
    }

    /// Refuses impossible settings, naming the field: a missing TAP interface, a passt socket
    /// that does not exist, fields of the other backend, a bad MAC.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.mac_bytes()?;
        match self.backend {
            NetBackendKind::Tap => {
                if self.socket.is_some() {
                    return Err(invalid("net.socket", "only with backend \"passt\""));
                }
                let name = self
                    .tap
                    .as_deref()
                    .ok_or_else(|| invalid("net.tap", "required with backend \"tap\""))?;
                check_tap("net.tap", name, Path::new("/sys/class/net"))
            }
            NetBackendKind::Passt => {
                if self.tap.is_some() {
                    return Err(invalid("net.tap", "only with backend \"tap\""));
                }
                let socket = self
                    .socket
                    .as_deref()
                    .ok_or_else(|| invalid("net.socket", "required with backend \"passt\""))?;
                super::check_socket("net.socket", socket, "passt")
            }
        }
    }
}

/// Parses `aa:bb:cc:dd:ee:ff` (hex, either case).
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        let part = parts.next()?;
        if part.len() != 2 {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// The TAP interface `name` exists under `sysfs_net` and is a tun/tap device.
fn check_tap(field: &str, name: &str, sysfs_net: &Path) -> Result<(), ConfigError> {
    if name.is_empty()
        || name.len() >= 16
        || name.contains(['/', '\0'])
        || name == "."
        || name == ".."
    {
        return Err(invalid(
            field,
            format!("{name:?} is not a valid interface name"),
        ));
    }
    let dir = sysfs_net.join(name);
    if !dir.exists() {
        return Err(invalid(
            field,
            format!("no network interface named {name:?}"),
        ));
    }
    if !dir.join("tun_flags").exists() {
        return Err(invalid(
            field,
            format!("{name:?} is not a tun/tap interface"),
        ));
    }
    if !Path::new("/dev/net/tun").exists() {
        return Err(invalid(field, "/dev/net/tun does not exist"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(json: serde_json::Value) -> Result<NetConfig, String> {
        serde_json::from_value(json).map_err(|e| e.to_string())
    }

    #[test]
    fn test_parse_mac() {
        assert_eq!(
            parse_mac("52:54:00:AB:cd:ef"),
            Some([0x52, 0x54, 0, 0xab, 0xcd, 0xef])
        );
        for bad in [
            "",
            "52:54:00:ab:cd",
            "52:54:00:ab:cd:ef:01",
            "5:54:00:ab:cd:ef",
            "zz:54:00:ab:cd:ef",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad}");
        }
    }

    #[test]
    fn test_net_config_validation_names_the_field() {
        let e = |json| cfg(json).unwrap().validate().unwrap_err().to_string();
        assert_eq!(
            e(serde_json::json!({"backend": "tap"})),
            "net.tap: required with backend \"tap\""
        );
        assert_eq!(
            e(serde_json::json!({"backend": "tap", "tap": "rmno-such-tap"})),
            "net.tap: no network interface named \"rmno-such-tap\""
        );
        assert_eq!(
            e(serde_json::json!({"backend": "tap", "tap": "lo"})),
            "net.tap: \"lo\" is not a tun/tap interface"
        );
        assert!(
            e(serde_json::json!({"backend": "passt", "socket": "/nonexistent/passt.sock"}))
                .starts_with("net.socket: cannot reach passt at /nonexistent/passt.sock")
        );
        assert_eq!(
            e(serde_json::json!({"backend": "passt", "socket": "/etc/hostname", "tap": "x"})),
            "net.tap: only with backend \"tap\""
        );
        assert_eq!(
            e(serde_json::json!({"backend": "passt", "socket": "/"})),
            "net.socket: / is not a unix socket"
        );
        assert!(
            e(serde_json::json!({"backend": "tap", "tap": "x", "mac": "01:00:00:00:00:01"}))
                .starts_with("net.mac: a multicast")
        );
        assert!(cfg(serde_json::json!({"backend": "vde"})).is_err());
        assert!(cfg(serde_json::json!({"backend": "tap", "tap": "x", "mtu": 1})).is_err());
    }

    #[test]
    fn test_net_config_accepts_a_listening_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("passt.sock");
        let _l = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let c = cfg(
            serde_json::json!({"backend": "passt", "socket": path, "mac": "02:00:00:00:00:01"}),
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.mac_bytes().unwrap(), [2, 0, 0, 0, 0, 1]);
    }
}
