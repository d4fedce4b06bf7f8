//! Wire formats shared by the rmachine host and the guest agent.
//!
//! Every connection from the host to a guest service starts with one [`hello`] line that
//! names the protocol version, the service and (on carriers that need it) the machine's
//! token; the agent answers `OK` or `ERR` before anything else flows. After that:
//! - [`Service::Control`]: newline-delimited JSON, see [`control`];
//! - [`Service::Engine`]: raw bytes spliced to the guest's `/run/docker.sock`;
//! - [`Service::Dial`]: one [`dial`] header line, then raw bytes (tcp) or length-prefixed
//!   datagrams (udp);
//! - [`Service::Exec`]: one [`exec`] header line (the command), then typed frames both
//!   ways (stdin, output, resize, signals, the exit code).
//!
//! The guest learns its token and hostname from the [`config_disk`]. An image's
//! [`image::Manifest`] says which protocol its agent speaks.
#![forbid(unsafe_code)]

pub mod config_disk;
pub mod control;
pub mod dial;
pub mod exec;
pub mod hello;
pub mod image;
pub mod line;
pub mod net;

/// The protocol version spoken by this build. A peer of another version is refused with
/// an error that names both versions.
pub const PROTOCOL_VERSION: u32 = 1;

/// The agent's version (the crate version of this build).
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The guest services, each on its own vsock port (and the same TCP port on the TCP
/// carrier).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Service {
    /// Versioned JSON-lines RPC: ping, version, info, sync-time, shutdown.
    Control,
    /// Dial a TCP or UDP address inside the guest and splice.
    Dial,
    /// Run a command in the guest, on a terminal or with pipes (`rmachine shell`, `cp`).
    Exec,
    /// The Docker Engine API, spliced to `/run/docker.sock`.
    Engine,
}

impl Service {
    /// All services, in port order.
    pub const ALL: [Service; 4] = [
        Service::Control,
        Service::Dial,
        Service::Exec,
        Service::Engine,
    ];

    /// The vsock (and TCP) port the agent serves this service on.
    pub fn port(self) -> u16 {
        match self {
            Service::Control => 1024,
            Service::Dial => 1025,
            Service::Exec => 1026,
            Service::Engine => 2375,
        }
    }

    /// The service's name on the wire (in the hello line).
    pub fn name(self) -> &'static str {
        match self {
            Service::Control => "control",
            Service::Dial => "dial",
            Service::Exec => "exec",
            Service::Engine => "engine",
        }
    }

    /// The service with this wire name.
    pub fn from_name(name: &str) -> Option<Service> {
        Service::ALL.into_iter().find(|s| s.name() == name)
    }

    /// The service served on this port.
    pub fn from_port(port: u16) -> Option<Service> {
        Service::ALL.into_iter().find(|s| s.port() == port)
    }
}

impl std::fmt::Display for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_service_round_trips_by_name_and_port() {
        for s in Service::ALL {
            assert_eq!(Service::from_name(s.name()), Some(s));
            assert_eq!(Service::from_port(s.port()), Some(s));
        }
        assert_eq!(Service::from_name("ssh"), None);
        assert_eq!(Service::from_port(22), None);
    }
}
