//! The switch of a network between machines (DESIGN.md, "Networks between machines"):
//! one rootless host process per network, a learning Ethernet switch whose ports are the
//! connections to one unix stream socket.
//!
//! Each connection is one port carrying Ethernet frames, each frame preceded by its
//! length as 4 bytes big-endian: the framing of QEMU's `-netdev stream` (and `-netdev
//! socket`), of passt, and of rmachine-vmm's stream backend. QEMU connects as a client
//! with `-netdev stream,id=n1,server=off,addr.type=unix,addr.path=SOCK` (QEMU 7.2 and
//! later), rmachine-vmm's virtio-net stream backend connects the same way.
//!
//! What the switch does:
//! - learns which port each source MAC address is behind ([`mac_table`]); a frame to a
//!   known unicast address goes to that port only; broadcast, multicast and unknown
//!   unicast frames are flooded to every other port; entries age out
//!   ([`SwitchOptions::aging`]) and go with their port when it disconnects;
//! - gives each port a bounded queue ([`SwitchOptions::queue_frames`]): when a port does
//!   not read fast enough, frames for it are dropped and counted, and the other ports
//!   never wait for it;
//! - closes a port that sends a length no Ethernet frame has (below 14 bytes, above
//!   [`SwitchOptions::max_frame_len`]), with a rate-limited warning; the others go on;
//! - counts frames and bytes per port and for the switch ([`SwitchStats`]).
//!
//! ```no_run
//! # async fn example() -> Result<(), rmachine_hostproxy::switch::SwitchError> {
//! use rmachine_hostproxy::switch::{self, SwitchOptions};
//! use tokio_util::sync::CancellationToken;
//!
//! let shutdown = CancellationToken::new();
//! let stats = switch::run("/run/user/1000/rmachine/net/swarm.sock".as_ref(),
//!     SwitchOptions::default(), shutdown).await?;
//! println!("{}", serde_json::to_string(&stats).unwrap_or_default());
//! # Ok(()) }
//! ```

use std::path::PathBuf;
use std::time::Duration;

pub mod bench;
mod frame;
mod log_limit;
pub mod mac_table;
mod port;
mod server;
mod stats;

pub use frame::{FrameError, LEN_PREFIX};
pub use mac_table::{MacAddr, MacTable};
pub use port::PortId;
pub use server::{run, Switch};
pub use stats::{PortStats, SwitchStats};

/// Default of [`SwitchOptions::aging`]: as IEEE 802.1D's default ageing time.
pub const DEFAULT_AGING: Duration = Duration::from_secs(300);

/// Default of [`SwitchOptions::queue_frames`].
pub const DEFAULT_QUEUE_FRAMES: usize = 256;

/// Default of [`SwitchOptions::max_frame_len`]: the largest IP packet (65535 bytes) with
/// an Ethernet header and one VLAN tag. rmachine-vmm sends at most 65550 bytes and
/// QEMU at most 69632 (its `NET_BUFSIZE`), so no frame of a guest is refused.
pub const DEFAULT_MAX_FRAME_LEN: usize = 65_535 + 14 + 4;

/// Default of [`SwitchOptions::max_macs`].
pub const DEFAULT_MAX_MACS: usize = 4096;

/// Default of [`SwitchOptions::max_ports`].
pub const DEFAULT_MAX_PORTS: usize = 256;

/// How the switch behaves. `Default` gives the values of the `DEFAULT_*` constants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwitchOptions {
    /// How long a learned MAC address stays without a frame from it. Default 300 s.
    pub aging: Duration,
    /// Frames queued for one port before further frames for it are dropped. Default 256.
    pub queue_frames: usize,
    /// Largest frame accepted, in bytes, without the 4-byte length. Default 65553.
    pub max_frame_len: usize,
    /// Most MAC addresses learned at once; beyond, frames from new addresses are still
    /// forwarded, and frames to them flooded. Default 4096.
    pub max_macs: usize,
    /// Most ports connected at once; further connections are closed. Default 256.
    pub max_ports: usize,
    /// [`run`] ends once no port has been connected for this long (from its start, or
    /// from its last port's going): a network's switch ends with its last machine.
    /// Default: never.
    pub idle_exit: Option<Duration>,
}

impl Default for SwitchOptions {
    fn default() -> SwitchOptions {
        SwitchOptions {
            aging: DEFAULT_AGING,
            queue_frames: DEFAULT_QUEUE_FRAMES,
            max_frame_len: DEFAULT_MAX_FRAME_LEN,
            max_macs: DEFAULT_MAX_MACS,
            max_ports: DEFAULT_MAX_PORTS,
            idle_exit: None,
        }
    }
}

/// Why the switch could not start or go on.
#[derive(Debug, thiserror::Error)]
pub enum SwitchError {
    #[error("invalid switch options: {0}")]
    Options(String),
    #[error("another switch is listening on {path}")]
    InUse { path: PathBuf },
    #[error("{path} exists and is not a socket")]
    NotASocket { path: PathBuf },
    #[error("cannot remove the stale socket {path}")]
    RemoveStale {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot listen on {path}")]
    Listen {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot restrict {path} to its owner")]
    Permissions {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the switch has {max} ports already")]
    PortsFull { max: usize },
    #[error("the switch is shut down")]
    ShutDown,
    #[error("cannot create the benchmark's sockets or runtime")]
    Bench(#[source] std::io::Error),
}

impl SwitchOptions {
    /// Checks that the options can run a switch.
    pub fn validate(&self) -> Result<(), SwitchError> {
        let bad = |why: &str| Err(SwitchError::Options(why.to_string()));
        if self.aging.is_zero() {
            return bad("aging must be above zero");
        }
        if self.queue_frames == 0 {
            return bad("queue_frames must be at least 1");
        }
        if self.max_frame_len < frame::MIN_FRAME_LEN || self.max_frame_len > u32::MAX as usize {
            return bad("max_frame_len must be at least 14 and fit 32 bits");
        }
        if self.max_ports == 0 {
            return bad("max_ports must be at least 1");
        }
        Ok(())
    }
}
