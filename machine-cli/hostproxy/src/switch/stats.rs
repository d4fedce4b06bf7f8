//! Counters: per port as atomics the port's task and the forwarding path bump, and the
//! snapshots [`super::Switch::stats`] returns.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

/// Counters of one port. "In" is what the port's peer sent to the switch, "out" what the
/// switch wrote to the peer.
#[derive(Debug, Default)]
pub struct PortCounters {
    pub frames_in: AtomicU64,
    pub bytes_in: AtomicU64,
    pub frames_out: AtomicU64,
    pub bytes_out: AtomicU64,
    /// Frames for this port dropped because its queue was full (it reads too slowly).
    pub drops: AtomicU64,
}

impl PortCounters {
    pub fn count_in(&self, bytes: usize) {
        self.frames_in.fetch_add(1, Ordering::Relaxed);
        self.bytes_in.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub fn count_out(&self, frames: u64, bytes: u64) {
        self.frames_out.fetch_add(frames, Ordering::Relaxed);
        self.bytes_out.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn snapshot(&self, id: u64) -> PortStats {
        PortStats {
            id,
            frames_in: self.frames_in.load(Ordering::Relaxed),
            bytes_in: self.bytes_in.load(Ordering::Relaxed),
            frames_out: self.frames_out.load(Ordering::Relaxed),
            bytes_out: self.bytes_out.load(Ordering::Relaxed),
            drops: self.drops.load(Ordering::Relaxed),
        }
    }
}

/// Counters of one port at one moment. Bytes are Ethernet frame bytes, without the
/// 4-byte length.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PortStats {
    pub id: u64,
    pub frames_in: u64,
    pub bytes_in: u64,
    pub frames_out: u64,
    pub bytes_out: u64,
    /// Frames for this port dropped because its queue was full.
    pub drops: u64,
}

impl PortStats {
    fn add(&mut self, other: &PortStats) {
        self.frames_in += other.frames_in;
        self.bytes_in += other.bytes_in;
        self.frames_out += other.frames_out;
        self.bytes_out += other.bytes_out;
        self.drops += other.drops;
    }
}

/// Counters of the switch as a whole.
#[derive(Debug, Default)]
pub struct SwitchCounters {
    pub floods: AtomicU64,
    pub filtered: AtomicU64,
    pub bad_frames: AtomicU64,
    pub ports_opened: AtomicU64,
    pub ports_refused: AtomicU64,
}

/// The switch at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SwitchStats {
    /// Connected ports, by id.
    pub ports: Vec<PortStats>,
    /// Every port's counters added up, those of ports gone included (`id` 0).
    pub total: PortStats,
    /// Frames flooded (broadcast, multicast, unknown unicast).
    pub floods: u64,
    /// Frames not sent anywhere: their destination is behind the port they came from.
    pub filtered: u64,
    /// Ports closed for a frame length no Ethernet frame has.
    pub bad_frames: u64,
    /// Ports connected since the start, and connections refused (too many ports).
    pub ports_opened: u64,
    pub ports_refused: u64,
    /// Learned MAC addresses held.
    pub mac_entries: usize,
}

impl SwitchStats {
    /// Builds the snapshot from the live ports and the sums of the closed ones.
    pub fn collect(
        ports: Vec<PortStats>,
        closed: &PortStats,
        counters: &SwitchCounters,
        mac_entries: usize,
    ) -> SwitchStats {
        let mut total = closed.clone();
        for port in &ports {
            total.add(port);
        }
        total.id = 0;
        SwitchStats {
            ports,
            total,
            floods: counters.floods.load(Ordering::Relaxed),
            filtered: counters.filtered.load(Ordering::Relaxed),
            bad_frames: counters.bad_frames.load(Ordering::Relaxed),
            ports_opened: counters.ports_opened.load(Ordering::Relaxed),
            ports_refused: counters.ports_refused.load(Ordering::Relaxed),
            mac_entries,
        }
    }

    /// The counters of the connected port `id`.
    pub fn port(&self, id: u64) -> Option<&PortStats> {
        self.ports.iter().find(|p| p.id == id)
    }
}

/// Adds a closing port's counters to the sums of closed ports.
pub fn add_closed(closed: &mut PortStats, port: &PortStats) {
    closed.add(port);
}
