//! The learning table: which port each source MAC address was last seen on, for how long.
//! Time is passed in (`now`), so tests age entries without waiting.

use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, Instant};

use super::port::PortId;

/// An Ethernet address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    pub const BROADCAST: MacAddr = MacAddr([0xff; 6]);

    /// Group addresses (broadcast included): the I/G bit, the first bit on the wire.
    pub fn is_multicast(self) -> bool {
        self.0[0] & 1 == 1
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

/// What learning an address did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Learned {
    /// A new address.
    New,
    /// Seen again on the same port.
    Refreshed,
    /// Seen on another port than before (a machine reconnected, or two share a MAC).
    Moved { from: PortId },
    /// Not learned: the table is full of live entries (or the address is a group one).
    Ignored,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    port: PortId,
    last_seen: Instant,
}

/// Source addresses and their ports, with aging and a size limit.
#[derive(Debug)]
pub struct MacTable {
    entries: HashMap<MacAddr, Entry>,
    aging: Duration,
    capacity: usize,
    /// When a full table last swept out stale entries: at most once a second, so a port
    /// spraying new source addresses cannot make every frame scan the table.
    last_full_sweep: Option<Instant>,
}

impl MacTable {
    pub fn new(aging: Duration, capacity: usize) -> MacTable {
        MacTable {
            entries: HashMap::new(),
            aging,
            capacity,
            last_full_sweep: None,
        }
    }

    fn live(&self, entry: &Entry, now: Instant) -> bool {
        now.saturating_duration_since(entry.last_seen) < self.aging
    }

    /// Notes that `mac` sent a frame from `port`.
    pub fn learn(&mut self, mac: MacAddr, port: PortId, now: Instant) -> Learned {
        if mac.is_multicast() {
            return Learned::Ignored;
        }
        if let Some(entry) = self.entries.get_mut(&mac) {
            let before = *entry;
            *entry = Entry {
                port,
                last_seen: now,
            };
            return if before.port == port {
                Learned::Refreshed
            } else {
                Learned::Moved { from: before.port }
            };
        }
        if self.entries.len() >= self.capacity {
            let may_sweep = self
                .last_full_sweep
                .is_none_or(|t| now.saturating_duration_since(t) >= Duration::from_secs(1));
            if !may_sweep {
                return Learned::Ignored;
            }
            self.last_full_sweep = Some(now);
            self.expire(now);
            if self.entries.len() >= self.capacity {
                return Learned::Ignored;
            }
        }
        self.entries.insert(
            mac,
            Entry {
                port,
                last_seen: now,
            },
        );
        Learned::New
    }

    /// The port `mac` was last seen on, unless that was longer ago than the aging time.
    pub fn lookup(&self, mac: MacAddr, now: Instant) -> Option<PortId> {
        self.entries
            .get(&mac)
            .filter(|entry| self.live(entry, now))
            .map(|entry| entry.port)
    }

    /// Forgets every address of `port` (it disconnected); returns how many.
    pub fn purge_port(&mut self, port: PortId) -> usize {
        let before = self.entries.len();
        self.entries.retain(|_, entry| entry.port != port);
        before - self.entries.len()
    }

    /// Forgets the entries older than the aging time; returns how many.
    pub fn expire(&mut self, now: Instant) -> usize {
        let before = self.entries.len();
        let aging = self.aging;
        self.entries
            .retain(|_, entry| now.saturating_duration_since(entry.last_seen) < aging);
        before - self.entries.len()
    }

    /// Entries held (stale ones included until they are expired).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: MacAddr = MacAddr([0x52, 0x54, 0, 0, 0, 0xa]);
    const B: MacAddr = MacAddr([0x52, 0x54, 0, 0, 0, 0xb]);
    const C: MacAddr = MacAddr([0x52, 0x54, 0, 0, 0, 0xc]);

    #[test]
    fn test_learning_moving_and_group_addresses() {
        let now = Instant::now();
        let mut table = MacTable::new(Duration::from_secs(300), 16);
        assert_eq!(table.lookup(A, now), None);
        assert_eq!(table.learn(A, PortId(1), now), Learned::New);
        assert_eq!(table.learn(A, PortId(1), now), Learned::Refreshed);
        assert_eq!(table.lookup(A, now), Some(PortId(1)));
        assert_eq!(
            table.learn(A, PortId(2), now),
            Learned::Moved { from: PortId(1) }
        );
        assert_eq!(table.lookup(A, now), Some(PortId(2)));
        assert_eq!(
            table.learn(MacAddr::BROADCAST, PortId(1), now),
            Learned::Ignored
        );
        assert_eq!(
            table.learn(MacAddr([0x01, 0, 0x5e, 0, 0, 1]), PortId(1), now),
            Learned::Ignored
        );
        assert_eq!(table.len(), 1);
        assert_eq!(A.to_string(), "52:54:00:00:00:0a");
    }

    #[test]
    fn test_entries_age_out_unless_refreshed() {
        let t0 = Instant::now();
        let aging = Duration::from_secs(300);
        let mut table = MacTable::new(aging, 16);
        table.learn(A, PortId(1), t0);
        table.learn(B, PortId(2), t0);
        table.learn(B, PortId(2), t0 + Duration::from_secs(200));
        let later = t0 + aging;
        assert_eq!(
            table.lookup(A, later - Duration::from_millis(1)),
            Some(PortId(1))
        );
        assert_eq!(table.lookup(A, later), None);
        assert_eq!(table.lookup(B, later), Some(PortId(2)));
        assert_eq!(table.expire(later), 1);
        assert_eq!(table.len(), 1);
        assert_eq!(table.learn(A, PortId(3), later), Learned::New);
    }

    #[test]
    fn test_purge_port_forgets_only_its_addresses() {
        let now = Instant::now();
        let mut table = MacTable::new(Duration::from_secs(300), 16);
        table.learn(A, PortId(1), now);
        table.learn(B, PortId(1), now);
        table.learn(C, PortId(2), now);
        assert_eq!(table.purge_port(PortId(1)), 2);
        assert_eq!(table.lookup(A, now), None);
        assert_eq!(table.lookup(C, now), Some(PortId(2)));
    }

    #[test]
    fn test_full_table_ignores_new_addresses_until_entries_age_out() {
        let t0 = Instant::now();
        let mut table = MacTable::new(Duration::from_secs(10), 2);
        table.learn(A, PortId(1), t0);
        table.learn(B, PortId(1), t0 + Duration::from_secs(5));
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        // Full of live entries: the sweep finds nothing stale.
        assert_eq!(table.learn(C, PortId(2), at(9_500)), Learned::Ignored);
        // Known addresses still refresh.
        assert_eq!(table.learn(B, PortId(1), at(9_600)), Learned::Refreshed);
        // A is stale now, but the last sweep was under a second ago: no new sweep.
        assert_eq!(table.learn(C, PortId(2), at(10_200)), Learned::Ignored);
        assert_eq!(table.learn(C, PortId(2), at(10_600)), Learned::New);
        assert_eq!(table.lookup(A, at(10_600)), None);
        assert_eq!(table.len(), 2);
    }
}
