//! What a published port is, where it is dialed in the guest, and what the publisher
//! reports about it.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use rmachine_protocol::dial::{DialRequest, Proto};
use serde::Serialize;

/// Transport of a published port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Tcp,
    Udp,
}

impl Transport {
    /// The dial service's name for this transport.
    pub fn proto(self) -> Proto {
        match self {
            Transport::Tcp => Proto::Tcp,
            Transport::Udp => Proto::Udp,
        }
    }

    /// Parses Docker's name (`tcp`, `udp`); `sctp` and others are `None`.
    pub fn from_docker(name: &str) -> Option<Transport> {
        match name {
            "tcp" => Some(Transport::Tcp),
            "udp" => Some(Transport::Udp),
            _ => None,
        }
    }
}

/// One port a container publishes: the same address is opened on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct PublishedPort {
    pub transport: Transport,
    /// The address to bind on the host: Docker's `HostIp` (`0.0.0.0` when it is empty).
    pub host_ip: IpAddr,
    pub host_port: u16,
}

impl PublishedPort {
    /// Where the guest's dockerd (its docker-proxy) listens for this port, as seen from
    /// inside the guest: a wildcard binding is dialed on the loopback address of the same
    /// family (`0.0.0.0` → `127.0.0.1`, `::` → `::1`), any other address as it is.
    ///
    /// `::` is dialed on `::1`, not `127.0.0.1`, because dockerd binds its `[::]`
    /// listener IPv6-only next to the `0.0.0.0` one, and a container may publish on `::`
    /// alone. dockerd only publishes on `::` when the guest has IPv6, so `::1` exists.
    pub fn guest_addr(&self) -> IpAddr {
        match self.host_ip {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        }
    }

    /// The dial header that reaches this port in the guest.
    pub fn dial_request(&self) -> DialRequest {
        DialRequest {
            proto: self.transport.proto(),
            guest_addr: self.guest_addr(),
            guest_port: self.host_port,
        }
    }
}

impl fmt::Display for PublishedPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let proto = self.transport.proto().as_str();
        match self.host_ip {
            IpAddr::V4(ip) => write!(f, "{ip}:{}/{proto}", self.host_port),
            IpAddr::V6(ip) => write!(f, "[{ip}]:{}/{proto}", self.host_port),
        }
    }
}

/// How published ports open on this host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostPorts {
    /// Open every port on the loopback address of its family, whatever address the
    /// engine publishes it on: a remote engine's ports are for this host alone.
    pub loopback_only: bool,
    /// Why udp ports are not forwarded, when they are not (reported as failed ports).
    pub udp_unsupported: Option<String>,
}

impl HostPorts {
    /// Where `port` opens on this host.
    pub fn bind_ip(&self, port: &PublishedPort) -> IpAddr {
        match (self.loopback_only, port.host_ip) {
            (false, ip) => ip,
            (true, IpAddr::V4(_)) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            (true, IpAddr::V6(_)) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        }
    }
}

/// The container a port belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ContainerRef {
    pub id: String,
    /// The container's name, without Docker's leading `/`.
    pub name: String,
}

/// What happened to a published port, for the host agent's log and `rmachine status`.
/// Serialized as an object tagged by `event` (`opened`, `closed`, `failed`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum PortEvent {
    /// The port is open on the host and forwards to the guest.
    Opened {
        port: PublishedPort,
        container: ContainerRef,
    },
    /// The port was closed on the host (its container stopped, or the publisher stopped).
    Closed {
        port: PublishedPort,
        container: ContainerRef,
    },
    /// The port could not be opened on the host; the container's other ports are
    /// unaffected. Retried when the container starts again or the engine is resynced.
    Failed {
        port: PublishedPort,
        container: ContainerRef,
        error: String,
    },
}

/// One row of [`crate::Publisher::snapshot`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PortStatus {
    pub port: PublishedPort,
    pub container: ContainerRef,
    /// `None` while the port is open; why it could not be opened otherwise.
    pub error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_remote_ports_open_on_the_loopback_of_their_family() {
        let remote = HostPorts {
            loopback_only: true,
            udp_unsupported: Some("no udp".into()),
        };
        for (published, bound) in [
            ("0.0.0.0", "127.0.0.1"),
            ("192.168.1.5", "127.0.0.1"),
            ("::", "::1"),
        ] {
            let p = port(published, Transport::Tcp);
            assert_eq!(remote.bind_ip(&p), bound.parse::<IpAddr>().unwrap());
            // The remote side is dialed where the engine publishes it.
            assert_eq!(p.dial_request().guest_addr, p.guest_addr());
        }
        let p = port("0.0.0.0", Transport::Tcp);
        assert_eq!(HostPorts::default().bind_ip(&p), p.host_ip);
    }

    fn port(ip: &str, transport: Transport) -> PublishedPort {
        PublishedPort {
            transport,
            host_ip: ip.parse().unwrap(),
            host_port: 8080,
        }
    }

    #[test]
    fn test_wildcards_are_dialed_on_the_guest_loopback() {
        assert_eq!(
            port("0.0.0.0", Transport::Tcp).dial_request().encode(),
            "tcp 127.0.0.1 8080\n"
        );
        assert_eq!(
            port("::", Transport::Udp).dial_request().encode(),
            "udp ::1 8080\n"
        );
        assert_eq!(
            port("127.0.0.1", Transport::Tcp).dial_request().encode(),
            "tcp 127.0.0.1 8080\n"
        );
        assert_eq!(
            port("10.0.2.15", Transport::Tcp).dial_request().encode(),
            "tcp 10.0.2.15 8080\n"
        );
    }

    #[test]
    fn test_event_serializes_tagged() {
        let event = PortEvent::Failed {
            port: port("::", Transport::Udp),
            container: ContainerRef {
                id: "abc".into(),
                name: "web".into(),
            },
            error: "address in use".into(),
        };
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "event": "failed",
                "port": { "transport": "udp", "host_ip": "::", "host_port": 8080 },
                "container": { "id": "abc", "name": "web" },
                "error": "address in use",
            })
        );
        assert_eq!(port("::", Transport::Udp).to_string(), "[::]:8080/udp");
    }
}
