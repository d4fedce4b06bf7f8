//! The guest's network: loopback, the first Ethernet interface configured by DHCP,
//! `/run/resolv.conf` (the image's /etc/resolv.conf points there) and the sysctls the
//! engine needs. Addresses and routes are set with iproute2's `ip`.

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

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

/// The first Ethernet interface backed by a device (virtio-net) in `sys_class_net`, by
/// name (eth0 before eth1). Virtual interfaces the kernel creates on its own (dummy0,
/// bridges) have no `device` link and are skipped.
pub fn first_interface(sys_class_net: &Path) -> Option<String> {
    let mut names: Vec<String> = std::fs::read_dir(sys_class_net)
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name != "lo")
        .filter(|name| sys_class_net.join(name).join("device").exists())
        .filter(|name| {
            std::fs::read_to_string(sys_class_net.join(name).join("type"))
                .is_ok_and(|t| t.trim() == ARPHRD_ETHER)
        })
        .collect();
    names.sort();
    names.into_iter().next()
}

/// Parses `52:54:00:12:34:56`.
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.trim().split(':');
    for byte in &mut mac {
        *byte = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

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

/// Sets up the network; returns the interface's address, if it got one. Each failure
/// is logged; none stops the boot.
pub async fn setup(reaper: &Reaper, hostname: &str) -> Option<Ipv4Addr> {
    let started = Instant::now();
    if let Err(e) = loopback_up(reaper).await {
        warn!(error = %error_chain(&e), "cannot bring lo up");
    }
    if let Err(e) = set_sysctl("net.ipv4.ip_forward", "1") {
        warn!(error = %error_chain(&e), "cannot enable IPv4 forwarding");
    }
    let Some(iface) = first_interface(Path::new("/sys/class/net")) else {
        info!("no network interface; skipping network setup");
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

    #[test]
    fn test_first_interface_skips_loopback_and_non_ethernet() {
        let dir = tempfile::tempdir().unwrap();
        for (name, kind, device) in [
            ("lo", "772", false),
            ("sit0", "776", true),
            ("dummy0", "1", false),
            ("eth1", "1", true),
            ("eth0", "1", true),
        ] {
            std::fs::create_dir_all(dir.path().join(name)).unwrap();
            std::fs::write(dir.path().join(name).join("type"), format!("{kind}\n")).unwrap();
            if device {
                std::fs::create_dir_all(dir.path().join(name).join("device")).unwrap();
            }
        }
        assert_eq!(first_interface(dir.path()).as_deref(), Some("eth0"));
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(first_interface(empty.path()), None);
        assert_eq!(first_interface(&empty.path().join("missing")), None);
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
