//! Address decoding: a bus maps address ranges (MMIO or x86 I/O ports) to devices.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// A device on a bus. Offsets are relative to the start of the device's range.
pub trait BusDevice: Send {
    /// The guest reads `data.len()` bytes at `offset`.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// The guest writes `data` at `offset`.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// Errors of [`Bus`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    /// The new range overlaps a registered one or is empty.
    #[error("range {base:#x}+{len:#x} overlaps another device or is empty")]
    Overlap {
        /// Start of the range.
        base: u64,
        /// Length of the range.
        len: u64,
    },
}

struct Entry {
    len: u64,
    device: Arc<Mutex<dyn BusDevice>>,
}

/// A set of non-overlapping address ranges, each served by one device.
#[derive(Default)]
pub struct Bus {
    devices: BTreeMap<u64, Entry>,
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `device` for `[base, base + len)`.
    pub fn insert(
        &mut self,
        device: Arc<Mutex<dyn BusDevice>>,
        base: u64,
        len: u64,
    ) -> Result<(), BusError> {
        let end = base
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or(BusError::Overlap { base, len })?;
        if let Some((prev_base, prev)) = self.devices.range(..end).next_back() {
            if prev_base + prev.len > base {
                return Err(BusError::Overlap { base, len });
            }
        }
        self.devices.insert(base, Entry { len, device });
        Ok(())
    }

    fn find(&self, addr: u64, access_len: usize) -> Option<(u64, &Arc<Mutex<dyn BusDevice>>)> {
        let (base, entry) = self.devices.range(..=addr).next_back()?;
        let offset = addr - base;
        let end = offset.checked_add(access_len as u64)?;
        (end <= entry.len).then_some((offset, &entry.device))
    }

    /// Forwards a read; false when no device covers the whole access.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((offset, device)) => {
                lock(device).read(offset, data);
                true
            }
            None => false,
        }
    }

    /// Forwards a write; false when no device covers the whole access.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((offset, device)) => {
                lock(device).write(offset, data);
                true
            }
            None => false,
        }
    }
}

/// Locks a device mutex, recovering the data if a previous holder panicked: a device's state
/// stays usable (at worst the guest sees a device error), the VMM keeps running.
pub fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Probe {
        last: Option<(u64, Vec<u8>)>,
    }

    impl BusDevice for Probe {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.last = Some((offset, data.to_vec()));
        }
    }

    #[test]
    fn test_bus_routes_and_rejects_overlap() {
        let mut bus = Bus::new();
        let probe = Arc::new(Mutex::new(Probe::default()));
        bus.insert(probe.clone(), 0x1000, 0x100).unwrap();
        assert!(bus.insert(probe.clone(), 0x10ff, 0x10).is_err());
        assert!(bus.insert(probe.clone(), 0xff0, 0x11).is_err());
        assert!(bus.insert(probe.clone(), 0x0, 0).is_err());
        bus.insert(probe.clone(), 0x1100, 0x10).unwrap();
        let mut data = [0u8; 2];
        assert!(bus.read(0x1004, &mut data));
        assert_eq!(data, [4, 4]);
        assert!(bus.write(0x1008, &[1, 2]));
        assert_eq!(probe.lock().unwrap().last, Some((8, vec![1, 2])));
        // An access straddling the end of a range is not served.
        assert!(!bus.read(0x10ff, &mut data));
        assert!(!bus.read(0x2000, &mut data));
    }
}
