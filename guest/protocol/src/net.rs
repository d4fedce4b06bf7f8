//! Networks between machines (DESIGN.md, "Networks between machines"): the extra NICs a
//! machine has on `rmachine network` switches, and the peer names the guest resolves.
//!
//! Both sides use these types: the host writes them on the [`crate::config_disk`] and in
//! [`crate::control::Request::SetHosts`]; the agent checks them with [`NetworkNic::parse`]
//! and [`HostEntry::parse`] before it touches an interface or `/etc/hosts`, so the host
//! can run the same checks before it sends anything.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// Most entries in a hosts list (config disk or `set_hosts`).
pub const MAX_HOSTS: usize = 1024;

/// Smallest MTU accepted (IPv4's minimum).
pub const MIN_MTU: u32 = 68;

/// Largest MTU accepted: the largest IP packet (65535 bytes) less an Ethernet header,
/// which fits the switch's and the VMM's largest frame.
pub const MAX_MTU: u32 = 65_535 - 14;

/// A NIC on a network between machines: a virtio-net device besides the user-mode one,
/// plugged into the network's switch, that the agent configures statically (address,
/// MTU, up; never a default route).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkNic {
    /// Name of the network (`rmachine network create NAME`), for logs.
    pub network: String,
    /// The NIC's MAC address, `52:54:00:ab:cd:ef`: how the agent finds the interface.
    pub mac: String,
    /// The machine's address on the network with its prefix length, `192.168.127.2/24`
    /// (IPv4 or IPv6).
    pub address: String,
    /// MTU in bytes; `None` keeps the kernel's default (1500).
    #[serde(default)]
    pub mtu: Option<u32>,
}

/// A [`NetworkNic`] whose fields were checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParsedNic {
    pub mac: [u8; 6],
    pub address: IpAddr,
    pub prefix_len: u8,
    pub mtu: Option<u32>,
}

/// A peer name for the guest's `/etc/hosts`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostEntry {
    /// A DNS name: labels of letters, digits and `-`, joined by dots.
    pub name: String,
    /// Its IPv4 or IPv6 address.
    pub ip: String,
}

/// Why a network field is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetError {
    #[error("{0:?} is not a MAC address (six hex bytes separated by colons)")]
    Mac(String),
    #[error("MAC address {0} is multicast (a NIC's address must be unicast)")]
    MulticastMac(String),
    #[error("{0:?} is not an address with a prefix length (such as 192.168.127.2/24)")]
    Cidr(String),
    #[error("MTU {0} is outside {MIN_MTU}..={MAX_MTU}")]
    Mtu(u32),
    #[error("{0:?} is not a valid host name")]
    HostName(String),
    #[error("{0:?} is not an IP address")]
    Ip(String),
    #[error("{count} host entries exceed the limit of {MAX_HOSTS}")]
    TooManyHosts { count: usize },
}

impl NetworkNic {
    /// The NIC's fields, checked.
    pub fn parse(&self) -> Result<ParsedNic, NetError> {
        let mac = parse_mac(&self.mac).ok_or_else(|| NetError::Mac(self.mac.clone()))?;
        if mac[0] & 1 == 1 {
            return Err(NetError::MulticastMac(self.mac.clone()));
        }
        let (address, prefix_len) =
            parse_cidr(&self.address).ok_or_else(|| NetError::Cidr(self.address.clone()))?;
        if let Some(mtu) = self.mtu {
            if !(MIN_MTU..=MAX_MTU).contains(&mtu) {
                return Err(NetError::Mtu(mtu));
            }
        }
        Ok(ParsedNic {
            mac,
            address,
            prefix_len,
            mtu: self.mtu,
        })
    }
}

impl HostEntry {
    /// The entry's address, with its name checked.
    pub fn parse(&self) -> Result<IpAddr, NetError> {
        if !valid_host_name(&self.name) {
            return Err(NetError::HostName(self.name.clone()));
        }
        self.ip
            .parse::<IpAddr>()
            .map_err(|_| NetError::Ip(self.ip.clone()))
    }

    /// Checks a whole list: its length and every entry.
    pub fn parse_all(entries: &[HostEntry]) -> Result<Vec<IpAddr>, NetError> {
        if entries.len() > MAX_HOSTS {
            return Err(NetError::TooManyHosts {
                count: entries.len(),
            });
        }
        entries.iter().map(HostEntry::parse).collect()
    }
}

/// Parses `52:54:00:12:34:56` (either case).
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.trim().split(':');
    for byte in &mut mac {
        let part = parts.next()?;
        if part.len() != 2 {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// Formats a MAC address as `52:54:00:12:34:56`.
pub fn format_mac(mac: [u8; 6]) -> String {
    let [a, b, c, d, e, f] = mac;
    format!("{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{f:02x}")
}

/// Parses `192.168.127.2/24` or `fd00::2/64`.
pub fn parse_cidr(text: &str) -> Option<(IpAddr, u8)> {
    let (addr, prefix) = text.split_once('/')?;
    let addr: IpAddr = addr.parse().ok()?;
    // Digits only: `u8::from_str` would take a leading `+`.
    if prefix.is_empty() || prefix.len() > 3 || !prefix.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let prefix: u8 = prefix.parse().ok()?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    (prefix <= max).then_some((addr, prefix))
}

/// A name `/etc/hosts` and resolvers accept (RFC 1123): at most 253 bytes of dot-separated
/// labels of 1 to 63 letters, digits and `-`, no label starting or ending with `-`. Nothing
/// else (no space, `#` or newline) can reach the hosts file.
pub fn valid_host_name(name: &str) -> bool {
    (1..=253).contains(&name.len())
        && name.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nic(mac: &str, address: &str, mtu: Option<u32>) -> NetworkNic {
        NetworkNic {
            network: "swarm".into(),
            mac: mac.into(),
            address: address.into(),
            mtu,
        }
    }

    #[test]
    fn test_nic_parses_and_rejects_bad_fields() {
        let parsed = nic("52:54:00:AB:cd:01", "192.168.127.2/24", Some(9000))
            .parse()
            .unwrap();
        assert_eq!(parsed.mac, [0x52, 0x54, 0, 0xab, 0xcd, 1]);
        assert_eq!(parsed.address, "192.168.127.2".parse::<IpAddr>().unwrap());
        assert_eq!((parsed.prefix_len, parsed.mtu), (24, Some(9000)));
        let v6 = nic("52:54:00:ab:cd:01", "fd00::2/64", None)
            .parse()
            .unwrap();
        assert_eq!(v6.prefix_len, 64);
        for (bad, want) in [
            (nic("52:54:00:ab:cd", "10.0.0.1/24", None), "MAC"),
            (nic("5:54:00:ab:cd:01", "10.0.0.1/24", None), "MAC"),
            (nic("01:00:5e:00:00:01", "10.0.0.1/24", None), "multicast"),
            (nic("52:54:00:ab:cd:01", "10.0.0.1", None), "prefix"),
            (nic("52:54:00:ab:cd:01", "10.0.0.1/33", None), "prefix"),
            (nic("52:54:00:ab:cd:01", "10.0.0.1/+8", None), "prefix"),
            (nic("52:54:00:ab:cd:01", "fd00::1/129", None), "prefix"),
            (nic("52:54:00:ab:cd:01", "10.0.0.1/24", Some(40)), "MTU"),
            (nic("52:54:00:ab:cd:01", "10.0.0.1/24", Some(70_000)), "MTU"),
        ] {
            let err = bad.parse().unwrap_err().to_string();
            assert!(err.contains(want), "{bad:?}: {err}");
        }
    }

    #[test]
    fn test_host_names_reject_what_could_break_the_hosts_file() {
        for good in ["peer", "node-2", "a.b.example", "x1", &"a".repeat(63)] {
            assert!(valid_host_name(good), "{good}");
        }
        for bad in [
            "",
            "-x",
            "x-",
            "a..b",
            ".a",
            "a b",
            "a\nb",
            "a#b",
            "a\tb",
            "é",
            &"a".repeat(64),
            &["a"; 128].join("."),
        ] {
            assert!(!valid_host_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn test_host_entries_parse_all_checks_count_names_and_ips() {
        let entry = |name: &str, ip: &str| HostEntry {
            name: name.into(),
            ip: ip.into(),
        };
        assert_eq!(
            HostEntry::parse_all(&[entry("a", "10.0.0.1"), entry("b", "fd00::1")])
                .unwrap()
                .len(),
            2
        );
        assert_eq!(
            HostEntry::parse_all(&[entry("a b", "10.0.0.1")]),
            Err(NetError::HostName("a b".into()))
        );
        assert_eq!(
            HostEntry::parse_all(&[entry("a", "10.0.0.256")]),
            Err(NetError::Ip("10.0.0.256".into()))
        );
        let many = vec![entry("a", "10.0.0.1"); MAX_HOSTS + 1];
        assert!(matches!(
            HostEntry::parse_all(&many),
            Err(NetError::TooManyHosts { .. })
        ));
    }

    #[test]
    fn test_mac_round_trips_through_text() {
        let mac = [0x52, 0x54, 0x00, 0x0a, 0xff, 0x10];
        assert_eq!(format_mac(mac), "52:54:00:0a:ff:10");
        assert_eq!(parse_mac(&format_mac(mac)), Some(mac));
        assert_eq!(parse_mac("52:54:00:0a:ff:10:00"), None);
    }
}
