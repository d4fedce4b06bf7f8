//! The virtio-mmio transport (virtio 1.2, 4.2.2), validated against the specification: the
//! device status state machine (3.1.1), feature negotiation (2.2), queue setup with addresses
//! checked against guest memory, 32-bit register accesses. Bad driver behaviour is counted,
//! logged at a limited rate and ignored or answered with DEVICE_NEEDS_RESET.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::EventFd;

use crate::bus::{lock, BusDevice};
use crate::interrupt::InterruptLine;
use crate::virtio::defs::{features::VIRTIO_F_VERSION_1, status};
use crate::virtio::persist::QueueSnapshot;
use crate::virtio::{ActiveQueues, VirtioDevice, VirtioInterrupt};

use super::persist::TransportSnapshot;
use crate::{warn_guest, GuestMemory};

/// Size of one device's MMIO window.
pub const MMIO_SIZE: u64 = 0x1000;

/// Register offsets (virtio 1.2, 4.2.2, table "MMIO Device Register Layout").
mod defs {
    pub const MAGIC_VALUE: u64 = 0x000;
    pub const VERSION: u64 = 0x004;
    pub const DEVICE_ID: u64 = 0x008;
    pub const VENDOR_ID: u64 = 0x00c;
    pub const DEVICE_FEATURES: u64 = 0x010;
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    pub const DRIVER_FEATURES: u64 = 0x020;
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    pub const QUEUE_SEL: u64 = 0x030;
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    pub const QUEUE_NUM: u64 = 0x038;
    pub const QUEUE_READY: u64 = 0x044;
    pub const QUEUE_NOTIFY: u64 = 0x050;
    pub const INTERRUPT_STATUS: u64 = 0x060;
    pub const INTERRUPT_ACK: u64 = 0x064;
    pub const STATUS: u64 = 0x070;
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    pub const QUEUE_DRIVER_LOW: u64 = 0x090;
    pub const QUEUE_DRIVER_HIGH: u64 = 0x094;
    pub const QUEUE_DEVICE_LOW: u64 = 0x0a0;
    pub const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
    pub const SHM_LEN_LOW: u64 = 0x0b0;
    pub const SHM_LEN_HIGH: u64 = 0x0b4;
    pub const CONFIG_GENERATION: u64 = 0x0fc;
    pub const CONFIG: u64 = 0x100;

    /// "virt", little endian.
    pub const MAGIC: u32 = 0x7472_6976;
    /// Version 2: the non-legacy interface.
    pub const MMIO_VERSION: u32 = 2;
    /// Our vendor id ("RMCH").
    pub const VENDOR: u32 = 0x4843_4d52;
}

/// Counters of the transport of one device.
#[derive(Debug, Default, serde::Serialize)]
pub struct TransportMetrics {
    /// Register accesses that are not aligned 32-bit accesses, or to unknown registers.
    pub invalid_register_access: AtomicU64,
    /// Status writes that break the initialization sequence.
    pub invalid_status_transition: AtomicU64,
    /// FEATURES_OK refused (unknown features acked or VERSION_1 missing).
    pub feature_negotiation_failures: AtomicU64,
    /// Queue register writes outside the setup phase, or queues that failed validation.
    pub invalid_queue_config: AtomicU64,
    /// Notifications of a bad queue or before DRIVER_OK.
    pub invalid_notify: AtomicU64,
    /// Activations that failed (the device is then marked DEVICE_NEEDS_RESET).
    pub activation_failures: AtomicU64,
    /// Device resets requested by the driver.
    pub resets: AtomicU64,
}

/// `current` with its low (or high) 32 bits replaced by `value`.
fn merge_half(current: u64, high: bool, value: u32) -> u64 {
    if high {
        (current & 0xffff_ffff) | (u64::from(value) << 32)
    } else {
        (current & !0xffff_ffff) | u64::from(value)
    }
}

fn inc(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// One virtio device behind a virtio-mmio register window.
pub struct MmioTransport {
    device: Arc<Mutex<dyn VirtioDevice>>,
    device_type: u32,
    avail_features: u64,
    queue_evts: Vec<EventFd>,
    mem: GuestMemory,
    interrupt: Arc<VirtioInterrupt>,
    queues: Vec<Queue>,
    features_select: u32,
    acked_features_select: u32,
    acked_features: u64,
    queue_select: u32,
    /// A misaligned ring address was written to the queue: it cannot become ready.
    bad_queue_address: Vec<bool>,
    status: u32,
    config_generation: u32,
    metrics: Arc<TransportMetrics>,
}

impl MmioTransport {
    /// Wraps `device`, raising `irq` for its interrupts.
    pub fn new(
        mem: GuestMemory,
        device: Arc<Mutex<dyn VirtioDevice>>,
        irq: Arc<dyn InterruptLine>,
    ) -> std::io::Result<Self> {
        let (device_type, avail_features, queue_evts, queues) = {
            let d = lock(&device);
            let evts = d
                .queue_events()
                .iter()
                .map(EventFd::try_clone)
                .collect::<std::io::Result<Vec<_>>>()?;
            let queues = d
                .queue_max_sizes()
                .iter()
                .map(|&max| Queue::new(max).map_err(|e| std::io::Error::other(e.to_string())))
                .collect::<std::io::Result<Vec<_>>>()?;
            (d.device_type(), d.avail_features(), evts, queues)
        };
        Ok(MmioTransport {
            bad_queue_address: vec![false; queues.len()],
            queues,
            device,
            device_type,
            avail_features,
            queue_evts,
            mem,
            interrupt: Arc::new(VirtioInterrupt::new(irq)),
            features_select: 0,
            acked_features_select: 0,
            acked_features: 0,
            queue_select: 0,
            status: 0,
            config_generation: 0,
            metrics: Arc::new(TransportMetrics::default()),
        })
    }

    /// The transport's counters.
    pub fn metrics(&self) -> Arc<TransportMetrics> {
        self.metrics.clone()
    }

    /// The device status register as the driver sees it.
    pub fn status(&self) -> u32 {
        let needs_reset = if self.interrupt.needs_reset() {
            status::DEVICE_NEEDS_RESET
        } else {
            0
        };
        self.status | needs_reset
    }

    /// Features the driver acknowledged.
    pub fn acked_features(&self) -> u64 {
        self.acked_features
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_select as usize)
    }

    fn queue_setup_allowed(&self) -> bool {
        self.status & status::FEATURES_OK != 0 && self.status & status::DRIVER_OK == 0
    }

    fn reset(&mut self) {
        inc(&self.metrics.resets);
        lock(&self.device).reset();
        for q in &mut self.queues {
            q.reset();
        }
        self.bad_queue_address.fill(false);
        self.features_select = 0;
        self.acked_features_select = 0;
        self.acked_features = 0;
        self.queue_select = 0;
        self.status = 0;
        self.interrupt.reset();
    }

    fn set_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        let old = self.status;
        if value & old != old {
            inc(&self.metrics.invalid_status_transition);
            warn_guest!(
                device = self.device_type,
                old,
                value,
                "virtio-mmio: driver cleared status bits"
            );
            return;
        }
        let new = value & !old;
        if new & status::FAILED != 0 {
            self.status |= status::FAILED;
            warn_guest!(device = self.device_type, "virtio-mmio: driver set FAILED");
            return;
        }
        let has = |bit| value & bit != 0;
        let ordered = (!has(status::DRIVER) || has(status::ACKNOWLEDGE))
            && (!has(status::FEATURES_OK) || has(status::DRIVER))
            && (!has(status::DRIVER_OK) || has(status::FEATURES_OK))
            && new
                & !(status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK)
                == 0;
        if !ordered {
            inc(&self.metrics.invalid_status_transition);
            warn_guest!(
                device = self.device_type,
                old,
                value,
                "virtio-mmio: status bits out of order"
            );
            return;
        }
        if new & status::FEATURES_OK != 0 {
            let unknown = self.acked_features & !self.avail_features;
            let version_1 = self.acked_features & (1 << VIRTIO_F_VERSION_1) != 0;
            if unknown != 0 || !version_1 {
                inc(&self.metrics.feature_negotiation_failures);
                warn_guest!(
                    device = self.device_type,
                    acked = self.acked_features,
                    "virtio-mmio: refusing FEATURES_OK"
                );
                // Leave FEATURES_OK clear: the driver reads it back and gives up (3.1.1).
                self.status = value & !(status::FEATURES_OK | status::DRIVER_OK);
                return;
            }
        }
        self.status = value;
        if new & status::DRIVER_OK != 0 {
            self.activate();
        }
    }

    fn activate(&mut self) {
        if let Err(reason) = self.try_activate() {
            inc(&self.metrics.activation_failures);
            warn_guest!(device = self.device_type, %reason, "virtio-mmio: activation failed; device needs reset");
            self.interrupt.set_needs_reset();
        }
    }

    fn try_activate(&mut self) -> Result<(), String> {
        // Queues that exist only with a feature the driver declined stay unused.
        let count = lock(&self.device)
            .active_queue_count(self.acked_features)
            .min(self.queues.len());
        let not_ready = self.queues[..count].iter().position(|q| !q.ready());
        match not_ready {
            Some(idx) => Err(format!("queue {idx} is not ready")),
            None => self.queues[..count]
                .iter()
                .map(|q| Queue::try_from(q.state()).map_err(|e| e.to_string()))
                .collect::<Result<Vec<_>, _>>()
                .and_then(|queues| {
                    lock(&self.device)
                        .activate(ActiveQueues {
                            mem: self.mem.clone(),
                            queues,
                            interrupt: self.interrupt.clone(),
                            acked_features: self.acked_features,
                        })
                        .map_err(|e| e.to_string())
                }),
        }
    }

    /// The transport's and its device's state, for a snapshot. The VM must be paused and the
    /// device idle (its lock held by the caller's order: transport, then device).
    pub fn save_state(&self) -> Result<TransportSnapshot, String> {
        let device = lock(&self.device);
        self.save_state_with(&*device)
    }

    /// [`save_state`](Self::save_state) with the device already held by the caller (`device`
    /// must be this transport's).
    pub fn save_state_with(&self, device: &dyn VirtioDevice) -> Result<TransportSnapshot, String> {
        if let Some(reason) = device.snapshot_blocker() {
            return Err(reason);
        }
        let activated = device.is_activated();
        let mut queues: Vec<QueueSnapshot> = self.queues.iter().map(QueueSnapshot::of).collect();
        if activated {
            let progress = device.queue_progress().unwrap_or_default();
            for (q, (next_avail, next_used)) in queues.iter_mut().zip(progress) {
                q.next_avail = next_avail;
                q.next_used = next_used;
            }
        }
        Ok(TransportSnapshot {
            device_type: self.device_type,
            status: self.status,
            features_select: self.features_select,
            acked_features_select: self.acked_features_select,
            acked_features: self.acked_features,
            queue_select: self.queue_select,
            config_generation: self.config_generation,
            interrupt_status: self.interrupt.status(),
            needs_reset: self.interrupt.needs_reset(),
            bad_queue_address: self.bad_queue_address.clone(),
            queues,
            activated,
            device: device.save_state(),
        })
    }

    /// Puts the transport back in `snap`'s state and, if the device was active, activates it
    /// again on its saved queues and restores its own state. Anything that does not fit this
    /// device (another type, a queue count that differs, an impossible queue) is an error.
    pub fn restore_state(&mut self, snap: &TransportSnapshot) -> Result<(), String> {
        if snap.device_type != self.device_type {
            return Err(format!(
                "device type {} in the snapshot, {} here",
                snap.device_type, self.device_type
            ));
        }
        if snap.queues.len() != self.queues.len()
            || snap.bad_queue_address.len() != self.queues.len()
        {
            return Err(format!(
                "{} queues in the snapshot, the device has {}",
                snap.queues.len(),
                self.queues.len()
            ));
        }
        let unknown = snap.acked_features & !self.avail_features;
        if unknown != 0 {
            return Err(format!(
                "the driver accepted features {unknown:#x} that this device does not offer"
            ));
        }
        let mut queues = Vec::with_capacity(snap.queues.len());
        for (i, (q, current)) in snap.queues.iter().zip(&self.queues).enumerate() {
            if q.max_size != current.max_size() {
                return Err(format!(
                    "queue {i}: maximum size {} in the snapshot, {} here",
                    q.max_size,
                    current.max_size()
                ));
            }
            let queue = q.to_queue().map_err(|e| format!("queue {i}: {e}"))?;
            if queue.ready() && !queue.is_valid(&self.mem) {
                return Err(format!("queue {i}: its rings are not in guest memory"));
            }
            queues.push(queue);
        }
        self.queues = queues;
        self.bad_queue_address = snap.bad_queue_address.clone();
        self.status = snap.status;
        self.features_select = snap.features_select;
        self.acked_features_select = snap.acked_features_select;
        self.acked_features = snap.acked_features;
        self.queue_select = snap.queue_select;
        self.config_generation = snap.config_generation;
        self.interrupt
            .restore(snap.interrupt_status, snap.needs_reset);
        if snap.activated {
            self.try_activate()
                .map_err(|e| format!("cannot activate the device again: {e}"))?;
            lock(&self.device).restore_state(&snap.device)?;
        }
        Ok(())
    }

    fn write_queue_register(&mut self, offset: u64, value: u32) {
        if !self.queue_setup_allowed() {
            inc(&self.metrics.invalid_queue_config);
            warn_guest!(
                device = self.device_type,
                offset,
                "virtio-mmio: queue register written outside setup"
            );
            return;
        }
        let mem = self.mem.clone();
        let index = self.queue_select as usize;
        let bad_address = self.bad_queue_address.get(index).copied().unwrap_or(true);
        let Some(queue) = self.queues.get_mut(index) else {
            inc(&self.metrics.invalid_queue_config);
            return;
        };
        if queue.ready() && !(offset == defs::QUEUE_READY && value == 0) {
            inc(&self.metrics.invalid_queue_config);
            return;
        }
        match offset {
            defs::QUEUE_NUM => {
                let valid =
                    value != 0 && value <= u32::from(queue.max_size()) && value.is_power_of_two();
                if valid {
                    queue.set_size(value as u16);
                } else {
                    inc(&self.metrics.invalid_queue_config);
                }
            }
            defs::QUEUE_READY => {
                if value == 1 {
                    queue.set_ready(true);
                    if bad_address || !queue.is_valid(&mem) {
                        queue.set_ready(false);
                        inc(&self.metrics.invalid_queue_config);
                        warn_guest!(
                            device = self.device_type,
                            "virtio-mmio: queue fails validation (size, alignment or memory)"
                        );
                    }
                } else {
                    queue.set_ready(false);
                }
            }
            defs::QUEUE_DESC_LOW | defs::QUEUE_DESC_HIGH => {
                let addr = merge_half(queue.desc_table(), offset == defs::QUEUE_DESC_HIGH, value);
                if queue
                    .try_set_desc_table_address(GuestAddress(addr))
                    .is_err()
                {
                    self.bad_queue_address[index] = true;
                }
            }
            defs::QUEUE_DRIVER_LOW | defs::QUEUE_DRIVER_HIGH => {
                let addr = merge_half(queue.avail_ring(), offset == defs::QUEUE_DRIVER_HIGH, value);
                if queue
                    .try_set_avail_ring_address(GuestAddress(addr))
                    .is_err()
                {
                    self.bad_queue_address[index] = true;
                }
            }
            defs::QUEUE_DEVICE_LOW | defs::QUEUE_DEVICE_HIGH => {
                let addr = merge_half(queue.used_ring(), offset == defs::QUEUE_DEVICE_HIGH, value);
                if queue.try_set_used_ring_address(GuestAddress(addr)).is_err() {
                    self.bad_queue_address[index] = true;
                }
            }
            _ => inc(&self.metrics.invalid_register_access),
        }
    }

    fn read_register(&mut self, offset: u64) -> u32 {
        match offset {
            defs::MAGIC_VALUE => defs::MAGIC,
            defs::VERSION => defs::MMIO_VERSION,
            defs::DEVICE_ID => self.device_type,
            defs::VENDOR_ID => defs::VENDOR,
            defs::DEVICE_FEATURES => match self.features_select {
                0 => self.avail_features as u32,
                1 => (self.avail_features >> 32) as u32,
                _ => 0,
            },
            defs::QUEUE_NUM_MAX => self
                .selected_queue()
                .map(|q| u32::from(q.max_size()))
                .unwrap_or(0),
            defs::QUEUE_READY => self
                .selected_queue()
                .map(|q| u32::from(q.ready()))
                .unwrap_or(0),
            defs::INTERRUPT_STATUS => self.interrupt.status(),
            defs::STATUS => self.status(),
            defs::SHM_LEN_LOW | defs::SHM_LEN_HIGH => u32::MAX,
            defs::CONFIG_GENERATION => self.config_generation,
            _ => {
                inc(&self.metrics.invalid_register_access);
                warn_guest!(
                    device = self.device_type,
                    offset,
                    "virtio-mmio: read of an unknown or write-only register"
                );
                0
            }
        }
    }

    fn write_register(&mut self, offset: u64, value: u32) {
        match offset {
            defs::DEVICE_FEATURES_SEL => self.features_select = value,
            defs::DRIVER_FEATURES => {
                let negotiating =
                    self.status & status::DRIVER != 0 && self.status & status::FEATURES_OK == 0;
                if !negotiating {
                    inc(&self.metrics.invalid_status_transition);
                    warn_guest!(
                        device = self.device_type,
                        "virtio-mmio: features written outside negotiation"
                    );
                    return;
                }
                match self.acked_features_select {
                    0 => {
                        self.acked_features =
                            (self.acked_features & !0xffff_ffff) | u64::from(value)
                    }
                    1 => {
                        self.acked_features =
                            (self.acked_features & 0xffff_ffff) | (u64::from(value) << 32)
                    }
                    _ if value == 0 => {}
                    _ => self.acked_features |= 1 << 63, // an unknown feature: refused at FEATURES_OK
                }
            }
            defs::DRIVER_FEATURES_SEL => self.acked_features_select = value,
            defs::QUEUE_SEL => self.queue_select = value,
            defs::QUEUE_NUM
            | defs::QUEUE_READY
            | defs::QUEUE_DESC_LOW
            | defs::QUEUE_DESC_HIGH
            | defs::QUEUE_DRIVER_LOW
            | defs::QUEUE_DRIVER_HIGH
            | defs::QUEUE_DEVICE_LOW
            | defs::QUEUE_DEVICE_HIGH => self.write_queue_register(offset, value),
            defs::QUEUE_NOTIFY => {
                let ready = self.status & status::DRIVER_OK != 0 && !self.interrupt.needs_reset();
                match self.queue_evts.get(value as usize) {
                    Some(evt) if ready => {
                        if let Err(e) = evt.write(1) {
                            tracing::error!(error = %e, "cannot signal a queue event");
                        }
                    }
                    _ => {
                        inc(&self.metrics.invalid_notify);
                        warn_guest!(
                            device = self.device_type,
                            queue = value,
                            "virtio-mmio: notify of a bad queue or before DRIVER_OK"
                        );
                    }
                }
            }
            defs::INTERRUPT_ACK => self.interrupt.ack(value),
            defs::STATUS => self.set_status(value),
            _ => {
                inc(&self.metrics.invalid_register_access);
                warn_guest!(
                    device = self.device_type,
                    offset,
                    "virtio-mmio: write of an unknown or read-only register"
                );
            }
        }
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= defs::CONFIG {
            lock(&self.device).read_config(offset - defs::CONFIG, data);
            return;
        }
        if data.len() != 4 || offset % 4 != 0 {
            inc(&self.metrics.invalid_register_access);
            data.fill(0);
            return;
        }
        let value = self.read_register(offset);
        data.copy_from_slice(&value.to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= defs::CONFIG {
            if self.status & status::DRIVER == 0 {
                inc(&self.metrics.invalid_register_access);
                return;
            }
            lock(&self.device).write_config(offset - defs::CONFIG, data);
            self.config_generation = self.config_generation.wrapping_add(1);
            return;
        }
        if data.len() != 4 || offset % 4 != 0 {
            inc(&self.metrics.invalid_register_access);
            return;
        }
        let value = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
        self.write_register(offset, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::interrupt::CountingInterrupt;
    use crate::virtio::{feature_bit, ActivateError};

    /// A two-queue device that records activation.
    struct Dummy {
        evts: Vec<EventFd>,
        active: bool,
        config: [u8; 8],
    }

    impl VirtioDevice for Dummy {
        fn device_type(&self) -> u32 {
            42
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[16, 16]
        }
        fn avail_features(&self) -> u64 {
            feature_bit(VIRTIO_F_VERSION_1) | feature_bit(3)
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            crate::virtio::read_config_bytes(&self.config, offset, data);
        }
        fn activate(&mut self, active: ActiveQueues) -> Result<(), ActivateError> {
            assert_eq!(active.queues.len(), 2);
            self.active = true;
            Ok(())
        }
        fn reset(&mut self) {
            self.active = false;
        }
        fn is_activated(&self) -> bool {
            self.active
        }
        fn queue_events(&self) -> &[EventFd] {
            &self.evts
        }
        fn queue_progress(&self) -> Option<Vec<(u16, u16)>> {
            self.active.then(|| vec![(3, 2), (0, 0)])
        }
    }

    fn transport() -> (MmioTransport, Arc<Mutex<Dummy>>) {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let dummy = Arc::new(Mutex::new(Dummy {
            evts: vec![EventFd::new(0).unwrap(), EventFd::new(0).unwrap()],
            active: false,
            config: [1, 2, 3, 4, 5, 6, 7, 8],
        }));
        let t =
            MmioTransport::new(mem, dummy.clone(), Arc::new(CountingInterrupt::default())).unwrap();
        (t, dummy)
    }

    fn r(t: &mut MmioTransport, offset: u64) -> u32 {
        let mut data = [0u8; 4];
        t.read(offset, &mut data);
        u32::from_le_bytes(data)
    }

    fn w(t: &mut MmioTransport, offset: u64, value: u32) {
        t.write(offset, &value.to_le_bytes());
    }

    fn negotiate(t: &mut MmioTransport) {
        w(t, defs::STATUS, status::ACKNOWLEDGE);
        w(t, defs::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        w(t, defs::DRIVER_FEATURES_SEL, 1);
        w(t, defs::DRIVER_FEATURES, 1);
        w(
            t,
            defs::STATUS,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
        );
    }

    fn setup_queue(t: &mut MmioTransport, idx: u32, base: u32) {
        w(t, defs::QUEUE_SEL, idx);
        w(t, defs::QUEUE_NUM, 16);
        w(t, defs::QUEUE_DESC_LOW, base);
        w(t, defs::QUEUE_DRIVER_LOW, base + 0x1000);
        w(t, defs::QUEUE_DEVICE_LOW, base + 0x2000);
        w(t, defs::QUEUE_READY, 1);
    }

    #[test]
    fn test_identification_registers() {
        let (mut t, _) = transport();
        assert_eq!(r(&mut t, defs::MAGIC_VALUE), 0x7472_6976);
        assert_eq!(r(&mut t, defs::VERSION), 2);
        assert_eq!(r(&mut t, defs::DEVICE_ID), 42);
        w(&mut t, defs::DEVICE_FEATURES_SEL, 1);
        assert_eq!(r(&mut t, defs::DEVICE_FEATURES), 1);
        w(&mut t, defs::DEVICE_FEATURES_SEL, 0);
        assert_eq!(r(&mut t, defs::DEVICE_FEATURES), 8);
        let mut cfg = [0u8; 2];
        t.read(defs::CONFIG + 6, &mut cfg);
        assert_eq!(cfg, [7, 8]);
    }

    #[test]
    fn test_full_initialization_activates_device() {
        let (mut t, dummy) = transport();
        negotiate(&mut t);
        assert_ne!(r(&mut t, defs::STATUS) & status::FEATURES_OK, 0);
        setup_queue(&mut t, 0, 0x10000);
        setup_queue(&mut t, 1, 0x20000);
        assert_eq!(r(&mut t, defs::QUEUE_READY), 1);
        w(
            &mut t,
            defs::STATUS,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK,
        );
        assert!(dummy.lock().unwrap().active);
        w(&mut t, defs::QUEUE_NOTIFY, 1);
        assert_eq!(dummy.lock().unwrap().evts[1].read().unwrap(), 1);
        // Reset returns everything to the start.
        w(&mut t, defs::STATUS, 0);
        assert!(!dummy.lock().unwrap().active);
        assert_eq!(r(&mut t, defs::STATUS), 0);
        w(&mut t, defs::QUEUE_SEL, 0);
        assert_eq!(r(&mut t, defs::QUEUE_READY), 0);
    }

    #[test]
    fn test_features_ok_refused_without_version_1_or_with_unknown_bits() {
        let (mut t, _) = transport();
        w(&mut t, defs::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        w(&mut t, defs::DRIVER_FEATURES_SEL, 0);
        w(&mut t, defs::DRIVER_FEATURES, 8);
        w(
            &mut t,
            defs::STATUS,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
        );
        assert_eq!(r(&mut t, defs::STATUS) & status::FEATURES_OK, 0);
        w(&mut t, defs::DRIVER_FEATURES_SEL, 1);
        w(&mut t, defs::DRIVER_FEATURES, 1 | 2); // VERSION_1 plus an unoffered bit
        w(
            &mut t,
            defs::STATUS,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
        );
        assert_eq!(r(&mut t, defs::STATUS) & status::FEATURES_OK, 0);
        assert_eq!(
            t.metrics
                .feature_negotiation_failures
                .load(Ordering::Relaxed),
            2
        );
    }

    #[test]
    fn test_status_out_of_order_is_ignored() {
        let (mut t, dummy) = transport();
        w(&mut t, defs::STATUS, status::DRIVER_OK);
        assert_eq!(r(&mut t, defs::STATUS), 0);
        w(
            &mut t,
            defs::STATUS,
            status::ACKNOWLEDGE | status::DRIVER | status::DRIVER_OK,
        );
        assert_eq!(r(&mut t, defs::STATUS), 0);
        assert!(!dummy.lock().unwrap().active);
        assert_eq!(
            t.metrics.invalid_status_transition.load(Ordering::Relaxed),
            2
        );
        // Features may not be written before DRIVER.
        w(&mut t, defs::DRIVER_FEATURES, 1);
        assert_eq!(t.acked_features(), 0);
    }

    #[test]
    fn test_queue_outside_memory_or_bad_size_not_ready() {
        let (mut t, _) = transport();
        negotiate(&mut t);
        w(&mut t, defs::QUEUE_SEL, 0);
        w(&mut t, defs::QUEUE_NUM, 12); // not a power of two
        w(&mut t, defs::QUEUE_NUM, 32); // above max
        w(&mut t, defs::QUEUE_DESC_LOW, 0x10000);
        w(&mut t, defs::QUEUE_DESC_HIGH, 0x1); // beyond guest memory
        w(&mut t, defs::QUEUE_DRIVER_LOW, 0x11000);
        w(&mut t, defs::QUEUE_DEVICE_LOW, 0x12000);
        w(&mut t, defs::QUEUE_READY, 1);
        assert_eq!(r(&mut t, defs::QUEUE_READY), 0);
        w(&mut t, defs::QUEUE_DESC_HIGH, 0);
        w(&mut t, defs::QUEUE_DEVICE_LOW, 0x12001); // misaligned used ring
        w(&mut t, defs::QUEUE_READY, 1);
        assert_eq!(r(&mut t, defs::QUEUE_READY), 0);
        assert!(t.metrics.invalid_queue_config.load(Ordering::Relaxed) >= 4);
        // A nonexistent queue reads as size 0.
        w(&mut t, defs::QUEUE_SEL, 7);
        assert_eq!(r(&mut t, defs::QUEUE_NUM_MAX), 0);
    }

    #[test]
    fn test_driver_ok_with_missing_queue_needs_reset() {
        let (mut t, dummy) = transport();
        negotiate(&mut t);
        setup_queue(&mut t, 0, 0x10000);
        w(
            &mut t,
            defs::STATUS,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK,
        );
        assert!(!dummy.lock().unwrap().active);
        assert_ne!(r(&mut t, defs::STATUS) & status::DEVICE_NEEDS_RESET, 0);
        assert_ne!(r(&mut t, defs::INTERRUPT_STATUS) & 2, 0);
        w(&mut t, defs::QUEUE_NOTIFY, 0);
        assert_eq!(t.metrics.invalid_notify.load(Ordering::Relaxed), 1);
        w(&mut t, defs::STATUS, 0);
        assert_eq!(r(&mut t, defs::STATUS), 0);
    }

    #[test]
    fn test_bad_access_width_and_unknown_registers() {
        let (mut t, _) = transport();
        let mut two = [0u8; 2];
        t.read(defs::MAGIC_VALUE, &mut two);
        assert_eq!(two, [0, 0]);
        t.write(defs::STATUS, &[1]);
        assert_eq!(r(&mut t, defs::STATUS), 0);
        w(&mut t, 0x0f0, 5);
        assert_eq!(r(&mut t, 0x0f0), 0);
        assert_eq!(t.metrics.invalid_register_access.load(Ordering::Relaxed), 4);
        // Notify before DRIVER_OK is ignored.
        w(&mut t, defs::QUEUE_NOTIFY, 0);
        assert_eq!(t.metrics.invalid_notify.load(Ordering::Relaxed), 1);
    }
}
