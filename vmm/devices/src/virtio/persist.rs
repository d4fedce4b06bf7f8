//! What the virtio devices put in a snapshot: queue positions, as plain serde data.

use serde::{Deserialize, Serialize};
use virtio_queue::{Queue, QueueT};

/// One virtqueue: its registers (set by the driver) and where the device is in its rings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueSnapshot {
    /// Largest size the device offers.
    pub max_size: u16,
    /// Size the driver chose.
    pub size: u16,
    /// QueueReady.
    pub ready: bool,
    /// Guest address of the descriptor table.
    pub desc_table: u64,
    /// Guest address of the available (driver) ring.
    pub avail_ring: u64,
    /// Guest address of the used (device) ring.
    pub used_ring: u64,
    /// The next available entry the device will take.
    pub next_avail: u16,
    /// The next used entry the device will write.
    pub next_used: u16,
    /// VIRTIO_RING_F_EVENT_IDX is in use.
    pub event_idx_enabled: bool,
}

impl QueueSnapshot {
    /// The state of `queue`.
    pub fn of(queue: &Queue) -> Self {
        let s = queue.state();
        QueueSnapshot {
            max_size: s.max_size,
            size: s.size,
            ready: s.ready,
            desc_table: s.desc_table,
            avail_ring: s.avail_ring,
            used_ring: s.used_ring,
            next_avail: s.next_avail,
            next_used: s.next_used,
            event_idx_enabled: s.event_idx_enabled,
        }
    }

    /// A queue in this state; an impossible state (a size that is not a power of two, a
    /// misaligned ring) is an error.
    pub fn to_queue(&self) -> Result<Queue, String> {
        let state = virtio_queue::QueueState {
            max_size: self.max_size,
            next_avail: self.next_avail,
            next_used: self.next_used,
            event_idx_enabled: self.event_idx_enabled,
            size: self.size,
            ready: self.ready,
            desc_table: self.desc_table,
            avail_ring: self.avail_ring,
            used_ring: self.used_ring,
        };
        Queue::try_from(state).map_err(|e| format!("invalid queue state: {e}"))
    }
}

/// `(next_avail, next_used)` of each queue of `queues`.
pub fn progress_of(queues: &[Queue]) -> Vec<(u16, u16)> {
    queues
        .iter()
        .map(|q| (q.next_avail(), q.next_used()))
        .collect()
}

/// Reads a device's own part of a snapshot, naming the device on error.
pub fn from_value<T: serde::de::DeserializeOwned>(
    device: &str,
    value: &serde_json::Value,
) -> Result<T, String> {
    serde_json::from_value(value.clone()).map_err(|e| format!("{device} state: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_queue_snapshot_round_trip_and_refuses_bad_size() {
        let mut q = Queue::new(256).unwrap();
        q.set_size(64);
        q.set_next_avail(7);
        q.set_next_used(5);
        let snap = QueueSnapshot::of(&q);
        let back = snap.to_queue().unwrap();
        assert_eq!(
            (back.next_avail(), back.next_used(), back.size()),
            (7, 5, 64)
        );
        let bad = QueueSnapshot { size: 3, ..snap };
        assert!(bad.to_queue().is_err());
    }
}
