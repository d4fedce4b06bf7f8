//! The guest's network: loopback, the primary (user-mode) interface configured by DHCP,
//! the NICs on networks between machines configured statically, `/run/resolv.conf` (the
//! image's /etc/resolv.conf points there) and the sysctls the engine needs. Addresses
//! and routes are set with iproute2's `ip`.
//!
//! Which interface is which: the config disk gives every extra NIC's MAC, and may give
//! the primary's. The primary is the interface with that MAC or, when the disk names
//! none (or no interface has it), the first virtio-net interface in name order whose MAC
//! no extra NIC has. So a second NIC never takes the default route, whatever order the
//! kernel probed the devices in.

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use rmachine_protocol::net::{format_mac, ParsedNic};
use tracing::{info, warn};

use crate::dhcp::{self, DhcpError, Lease};
use crate::logging::error_chain;
use crate::reaper::{self, Reaper, ReaperError};

/// Where the resolver configuration is written.
pub const RESOLV_CONF: &str = "/run/resolv.conf";

/// How long DHCP may take before boot goes on without an address.
pub const DHCP_TIMEOUT: Duration = Duration::from_secs(10);

/// How long to wait for the interface's carrier after bringing it up.
const CARRIER_WAIT: Duration = Duration::from_millis(500);

/// `ARPHRD_ETHER` in /sys/class/net/*/type.
const ARPHRD_ETHER: &str = "1";

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("cannot run ip {args}")]
    Ip {
        args: String,
        #[source]
        source: ReaperError,
    },
    #[error("cannot read the MAC address of {iface}")]
    Mac { iface: String },
    #[error("no network interface has MAC address {mac}")]
    NoInterface { mac: String },
    #[error(transparent)]
    Dhcp(#[from] DhcpError),
    #[error("cannot write {path}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot set sysctl {name}")]
    Sysctl {
        name: String,
        #[source]
        source: std::io::Error,
    },
}

/// A NIC on a network between machines, as the config disk gave it (checked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticNic {
    /// The network's name, for logs.
    pub network: String,
    pub nic: ParsedNic,
}

/// An Ethernet interface backed by a device (virtio-net).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    /// `None` when sysfs did not give a readable address.
    pub mac: Option<[u8; 6]>,
}

/// The Ethernet interfaces backed by a device in `sys_class_net`, in natural name order
/// (eth2 before eth10). Virtual interfaces the kernel creates on its own (dummy0,
/// bridges) have no `device` link and are skipped.
pub fn interfaces(sys_class_net: &Path) -> Vec<Interface> {
    let Ok(entries) = std::fs::read_dir(sys_class_net) else {
        return Vec::new();
    };
    let mut found: Vec<Interface> = entries
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name != "lo")
        .filter(|name| sys_class_net.join(name).join("device").exists())
        .filter(|name| {
            std::fs::read_to_string(sys_class_net.join(name).join("type"))
                .is_ok_and(|t| t.trim() == ARPHRD_ETHER)
        })
        .map(|name| Interface {
            mac: std::fs::read_to_string(sys_class_net.join(&name).join("address"))
                .ok()
                .and_then(|text| parse_mac(&text)),
            name,
        })
        .collect();
    found.sort_by(|a, b| natural_key(&a.name).cmp(&natural_key(&b.name)));
    found
}

/// `eth10` as (`eth`, 10, ``): names sort by prefix, then number.
fn natural_key(name: &str) -> (&str, u64, &str) {
    let digits_at = name
        .find(|c: char| c.is_ascii_digit())
        .unwrap_or(name.len());
    let (prefix, rest) = name.split_at(digits_at);
    let digits_end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    let number = rest[..digits_end].parse().unwrap_or(u64::MAX);
    (prefix, number, &rest[digits_end..])
}

/// The primary (user-mode) interface: the one with `primary_mac` if the config disk named
/// it and it exists, else the first whose MAC is none of the extra NICs'.
pub fn primary_interface<'a>(
    interfaces: &'a [Interface],
    primary_mac: Option<[u8; 6]>,
    extra_macs: &[[u8; 6]],
) -> Option<&'a Interface> {
    if let Some(mac) = primary_mac {
        match interface_by_mac(interfaces, mac) {
            Some(found) => return Some(found),
            None => warn!(
                mac = %format_mac(mac),
                "no interface has the primary MAC of the config disk; using the first other one"
            ),
        }
    }
    interfaces
        .iter()
        .find(|i| i.mac.is_none_or(|mac| !extra_macs.contains(&mac)))
}

/// The interface with this MAC.
pub fn interface_by_mac(interfaces: &[Interface], mac: [u8; 6]) -> Option<&Interface> {
    interfaces.iter().find(|i| i.mac == Some(mac))
}

pub use rmachine_protocol::net::parse_mac;

/// The resolver configuration for a lease.
pub fn resolv_conf(lease: Option<&Lease>) -> String {
    let mut text = String::from("# written by rmachine-agent\n");
    if let Some(lease) = lease {
        if let Some(domain) = &lease.domain {
            text.push_str(&format!("search {domain}\n"));
        }
        for dns in &lease.dns {
            text.push_str(&format!("nameserver {dns}\n"));
        }
    }
    text
}

fn write_resolv_conf(lease: Option<&Lease>) -> Result<(), NetworkError> {
    std::fs::write(RESOLV_CONF, resolv_conf(lease)).map_err(|source| NetworkError::Write {
        path: RESOLV_CONF.into(),
        source,
    })
}

/// Writes `/proc/sys/<name with dots as slashes>`.
pub fn set_sysctl(name: &str, value: &str) -> Result<(), NetworkError> {
    let path = Path::new("/proc/sys").join(name.replace('.', "/"));
    std::fs::write(path, value).map_err(|source| NetworkError::Sysctl {
        name: name.into(),
        source,
    })
}

async fn ip(reaper: &Reaper, args: &[&str]) -> Result<(), NetworkError> {
    let mut command = reaper::command("ip");
    command.args(args);
    reaper
        .run_checked(&mut command)
        .await
        .map(|_| ())
        .map_err(|source| NetworkError::Ip {
            args: args.join(" "),
            source,
        })
}

/// Brings loopback up.
pub async fn loopback_up(reaper: &Reaper) -> Result<(), NetworkError> {
    ip(reaper, &["link", "set", "lo", "up"]).await
}

async fn wait_for_carrier(iface: &str) {
    let path = Path::new("/sys/class/net").join(iface).join("carrier");
    let deadline = Instant::now() + CARRIER_WAIT;
    while Instant::now() < deadline {
        if std::fs::read_to_string(&path).is_ok_and(|c| c.trim() == "1") {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    warn!(
        iface,
        "no carrier after {CARRIER_WAIT:?}; trying DHCP anyway"
    );
}

/// Gives the address, MTU and default route of a lease to the interface.
async fn apply(reaper: &Reaper, iface: &str, lease: &Lease) -> Result<(), NetworkError> {
    if let Some(mtu) = lease.mtu {
        let mtu = mtu.to_string();
        if let Err(e) = ip(reaper, &["link", "set", "dev", iface, "mtu", &mtu]).await {
            warn!(iface, error = %e, "cannot set the MTU the DHCP server gave");
        }
    }
    let cidr = format!("{}/{}", lease.address, lease.prefix_len);
    ip(
        reaper,
        &["addr", "replace", &cidr, "broadcast", "+", "dev", iface],
    )
    .await?;
    if let Some(router) = lease.router {
        let router = router.to_string();
        ip(
            reaper,
            &["route", "replace", "default", "via", &router, "dev", iface],
        )
        .await?;
    }
    Ok(())
}

/// The `ip` commands that configure a NIC on a network between machines: MTU, address
/// (with its subnet's route, so peers are reachable) and up. No default route.
pub fn static_commands(iface: &str, nic: &ParsedNic) -> Vec<Vec<String>> {
    let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let mut commands = Vec::new();
    if let Some(mtu) = nic.mtu {
        commands.push(args(&[
            "link",
            "set",
            "dev",
            iface,
            "mtu",
            &mtu.to_string(),
        ]));
    }
    let cidr = format!("{}/{}", nic.address, nic.prefix_len);
    let mut addr = args(&["addr", "replace", &cidr]);
    if nic.address.is_ipv4() {
        addr.extend(args(&["broadcast", "+"]));
    } else {
        // No duplicate address detection: the host gave every machine its own address,
        // and DAD would hold the address back for a second after the link comes up.
        addr.push("nodad".into());
    }
    addr.extend(args(&["dev", iface]));
    commands.push(addr);
    commands.push(args(&["link", "set", "dev", iface, "up"]));
    commands
}

/// Configures one NIC on a network between machines; returns its interface's name.
async fn configure_static(
    reaper: &Reaper,
    interfaces: &[Interface],
    nic: &StaticNic,
) -> Result<String, NetworkError> {
    let iface = interface_by_mac(interfaces, nic.nic.mac)
        .ok_or_else(|| NetworkError::NoInterface {
            mac: format_mac(nic.nic.mac),
        })?
        .name
        .clone();
    for command in static_commands(&iface, &nic.nic) {
        let args: Vec<&str> = command.iter().map(String::as_str).collect();
        ip(reaper, &args).await?;
    }
    Ok(iface)
}

/// Sets up the network: the NICs on networks between machines first (static, quick),
/// then DHCP on the primary interface. Returns the primary's address, if it got one.
/// Each failure is logged; none stops the boot.
pub async fn setup(
    reaper: &Reaper,
    hostname: &str,
    primary_mac: Option<[u8; 6]>,
    networks: &[StaticNic],
) -> Option<Ipv4Addr> {
    let started = Instant::now();
    if let Err(e) = loopback_up(reaper).await {
        warn!(error = %error_chain(&e), "cannot bring lo up");
    }
    if let Err(e) = set_sysctl("net.ipv4.ip_forward", "1") {
        warn!(error = %error_chain(&e), "cannot enable IPv4 forwarding");
    }
    let found = interfaces(Path::new("/sys/class/net"));
    for nic in networks {
        match configure_static(reaper, &found, nic).await {
            Ok(iface) => info!(
                iface,
                network = %nic.network,
                address = %nic.nic.address,
                prefix_len = nic.nic.prefix_len,
                mtu = ?nic.nic.mtu,
                "network between machines configured"
            ),
            Err(e) => warn!(
                network = %nic.network,
                error = %error_chain(&e),
                "network between machines not configured"
            ),
        }
    }
    let extra_macs: Vec<[u8; 6]> = networks.iter().map(|n| n.nic.mac).collect();
    let Some(iface) = primary_interface(&found, primary_mac, &extra_macs).map(|i| i.name.clone())
    else {
        info!("no primary network interface; skipping DHCP");
        if let Err(e) = write_resolv_conf(None) {
            warn!(error = %error_chain(&e), "cannot write resolv.conf");
        }
        return None;
    };

    let lease = match configure(reaper, &iface, hostname).await {
        Ok(lease) => Some(lease),
        Err(e) => {
            warn!(iface, error = %error_chain(&e), "network not configured");
            None
        }
    };
    if let Err(e) = write_resolv_conf(lease.as_ref()) {
        warn!(error = %error_chain(&e), "cannot write resolv.conf");
    }
    if let Some(lease) = &lease {
        info!(
            iface,
            address = %lease.address,
            prefix_len = lease.prefix_len,
            router = ?lease.router,
            dns = ?lease.dns,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "network configured"
        );
    }
    lease.map(|l| l.address)
}

async fn configure(reaper: &Reaper, iface: &str, hostname: &str) -> Result<Lease, NetworkError> {
    let mac = std::fs::read_to_string(Path::new("/sys/class/net").join(iface).join("address"))
        .ok()
        .and_then(|text| parse_mac(&text))
        .ok_or_else(|| NetworkError::Mac {
            iface: iface.to_string(),
        })?;
    ip(reaper, &["link", "set", "dev", iface, "up"]).await?;
    wait_for_carrier(iface).await;
    let socket = dhcp::client_socket(iface)?;
    let lease = dhcp::acquire(
        &socket,
        dhcp::broadcast_server(),
        mac,
        hostname,
        DHCP_TIMEOUT,
    )
    .await?;
    apply(reaper, iface, &lease).await?;
    Ok(lease)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake /sys/class/net: (name, type, has a device link, MAC).
    fn fake_sys(entries: &[(&str, &str, bool, Option<&str>)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, kind, device, mac) in entries {
            std::fs::create_dir_all(dir.path().join(name)).unwrap();
            std::fs::write(dir.path().join(name).join("type"), format!("{kind}\n")).unwrap();
            if *device {
                std::fs::create_dir_all(dir.path().join(name).join("device")).unwrap();
            }
            if let Some(mac) = mac {
                std::fs::write(dir.path().join(name).join("address"), format!("{mac}\n")).unwrap();
            }
        }
        dir
    }

    const USER_MAC: &str = "52:54:00:12:34:56";
    const NET_MAC: &str = "52:54:00:aa:00:02";

    fn mac(text: &str) -> [u8; 6] {
        parse_mac(text).unwrap()
    }

    fn names(found: &[Interface]) -> Vec<&str> {
        found.iter().map(|i| i.name.as_str()).collect()
    }

    #[test]
    fn test_interfaces_skip_loopback_and_non_ethernet_in_natural_order() {
        let dir = fake_sys(&[
            ("lo", "772", false, Some("00:00:00:00:00:00")),
            ("sit0", "776", true, None),
            ("dummy0", "1", false, Some("02:00:00:00:00:01")),
            ("eth10", "1", true, Some("52:54:00:00:00:10")),
            ("eth1", "1", true, Some(NET_MAC)),
            ("eth2", "1", true, None),
            ("eth0", "1", true, Some(USER_MAC)),
        ]);
        let found = interfaces(dir.path());
        assert_eq!(names(&found), ["eth0", "eth1", "eth2", "eth10"]);
        assert_eq!(found[0].mac, Some(mac(USER_MAC)));
        assert_eq!(found[2].mac, None);
        let empty = tempfile::tempdir().unwrap();
        assert!(interfaces(empty.path()).is_empty());
        assert!(interfaces(&empty.path().join("missing")).is_empty());
    }

    #[test]
    fn test_primary_interface_is_never_a_network_nic() {
        // The kernel probed the network NIC first: it is eth0.
        let dir = fake_sys(&[
            ("eth0", "1", true, Some(NET_MAC)),
            ("eth1", "1", true, Some(USER_MAC)),
        ]);
        let found = interfaces(dir.path());
        let extra = [mac(NET_MAC)];
        let primary = |primary_mac: Option<&str>, extra: &[[u8; 6]]| {
            primary_interface(&found, primary_mac.map(mac), extra).map(|i| i.name.clone())
        };
        assert_eq!(primary(None, &extra).as_deref(), Some("eth1"));
        // Named by the config disk.
        assert_eq!(primary(Some(USER_MAC), &extra).as_deref(), Some("eth1"));
        // A primary MAC that no interface has: the first other one still.
        assert_eq!(
            primary(Some("52:54:00:99:99:99"), &extra).as_deref(),
            Some("eth1")
        );
        // Without networks: the first interface, as before.
        assert_eq!(primary(None, &[]).as_deref(), Some("eth0"));
        // Only network NICs: no primary.
        assert_eq!(primary_interface(&found[..1], None, &extra), None);
        assert_eq!(
            interface_by_mac(&found, mac(NET_MAC)).map(|i| i.name.as_str()),
            Some("eth0")
        );
        assert_eq!(interface_by_mac(&found, mac("52:54:00:99:99:99")), None);
    }

    #[test]
    fn test_static_commands_set_mtu_address_and_up_without_a_route() {
        let nic = ParsedNic {
            mac: mac(NET_MAC),
            address: "192.168.127.2".parse().unwrap(),
            prefix_len: 24,
            mtu: Some(9000),
        };
        let lines = |nic: &ParsedNic| -> Vec<String> {
            static_commands("eth1", nic)
                .iter()
                .map(|c| c.join(" "))
                .collect()
        };
        assert_eq!(
            lines(&nic),
            [
                "link set dev eth1 mtu 9000",
                "addr replace 192.168.127.2/24 broadcast + dev eth1",
                "link set dev eth1 up",
            ]
        );
        let v6 = ParsedNic {
            address: "fd00::2".parse().unwrap(),
            prefix_len: 64,
            mtu: None,
            ..nic
        };
        assert_eq!(
            lines(&v6),
            [
                "addr replace fd00::2/64 nodad dev eth1",
                "link set dev eth1 up"
            ]
        );
        assert!(lines(&nic).iter().all(|l| !l.contains("route")));
    }

    #[test]
    fn test_parse_mac() {
        assert_eq!(
            parse_mac("52:54:00:12:34:5f\n"),
            Some([0x52, 0x54, 0, 0x12, 0x34, 0x5f])
        );
        assert_eq!(parse_mac("52:54:00:12:34"), None);
        assert_eq!(parse_mac("52:54:00:12:34:56:78"), None);
        assert_eq!(parse_mac("zz:54:00:12:34:56"), None);
    }

    #[test]
    fn test_resolv_conf_lists_the_lease_servers() {
        let lease = Lease {
            address: Ipv4Addr::new(10, 0, 2, 15),
            prefix_len: 24,
            router: Some(Ipv4Addr::new(10, 0, 2, 2)),
            dns: vec![Ipv4Addr::new(10, 0, 2, 3), Ipv4Addr::new(1, 1, 1, 1)],
            domain: Some("lan".into()),
            server: None,
            lease_s: None,
            mtu: None,
        };
        assert_eq!(
            resolv_conf(Some(&lease)),
            "# written by rmachine-agent\nsearch lan\nnameserver 10.0.2.3\nnameserver 1.1.1.1\n"
        );
        assert_eq!(resolv_conf(None), "# written by rmachine-agent\n");
    }
}
