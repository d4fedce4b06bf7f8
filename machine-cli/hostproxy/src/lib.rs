//! Host-side forwarding of a machine's guest: published ports (DESIGN.md, "Published
//! ports").
//!
//! The host agent follows the guest Engine API's `/events` stream and its container
//! list. For every published port (host IP, host port, tcp or udp) of a running
//! container it opens the same port on the host and forwards each connection (or each
//! udp peer) over the guest's dial service to the port that the guest's dockerd
//! publishes. Ports close when their container stops, dies or is removed. A host port
//! that cannot be opened (already in use, no permission) is reported as a
//! [`PortEvent::Failed`]; the other ports keep working.
//!
//! [`serve_engine`] serves the guest's Engine API on the machine's `docker.sock`: an
//! HTTP/1.1 proxy that streams everything through (upgrades included) and lets a
//! [`CreatePolicy`] review container creations ([`MachinePolicy`]: bind mounts only
//! from shared folders, `host.docker.internal` added).
//!
//! [`switch`] (unix) is the Ethernet switch of a network between machines: one process
//! per network, each machine's second NIC a port on its unix socket.
//!
//! ```no_run
//! # async fn example(carrier: rmachine_machine::guest_link::Carrier) {
//! use std::sync::Arc;
//! use rmachine_hostproxy::{Publisher, PortEvent};
//! use tokio_util::sync::CancellationToken;
//!
//! let (events_tx, mut events_rx) = tokio::sync::mpsc::channel::<PortEvent>(64);
//! let publisher = Arc::new(Publisher::new(Arc::new(carrier), events_tx));
//! let shutdown = CancellationToken::new();
//! tokio::spawn({
//!     let publisher = Arc::clone(&publisher);
//!     let shutdown = shutdown.clone();
//!     async move { publisher.run(shutdown).await }
//! });
//! while let Some(event) = events_rx.recv().await {
//!     println!("{}", serde_json::to_string(&event).unwrap_or_default());
//! }
//! # }
//! ```
#![forbid(unsafe_code)]

pub mod connector;
pub mod create_policy;
pub mod engine;
pub mod engine_proxy;
mod forwarder;
mod json_lines;
pub mod port;
mod port_table;
pub mod publisher;
pub mod share_events;
#[cfg(unix)]
pub mod switch;

#[cfg(test)]
mod fake_engine;
#[cfg(test)]
mod fake_guest;

pub use connector::{GuestConnector, GuestIo};
pub use create_policy::{CreatePolicy, MachinePolicy, RemotePolicy, Share};
pub use engine_proxy::{never_paused, serve_engine, Paused};
pub use port::{ContainerRef, HostPorts, PortEvent, PortStatus, PublishedPort, Transport};
pub use publisher::{run, Publisher};
pub use share_events::BindEvent;
