//! The virtio-balloon device.

use std::num::Wrapping;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use virtio_queue::QueueT;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::defs::{
    CONFIG_ACTUAL, CONFIG_LEN, VIRTIO_BALLOON_F_DEFLATE_ON_OOM,
    VIRTIO_BALLOON_F_FREE_PAGE_REPORTING,
};
use super::metrics::BalloonMetrics;
use super::request::{in_memory, parse_pfns, pfn_ranges, report_ranges, Range, RequestError};
use super::{BalloonError, DiscardMemory, DEFLATEQ, INFLATEQ, QUEUE_SIZE, REPORTQ};
use crate::virtio::chain::{self, ChainError};
use crate::virtio::defs::{device_type, features::VIRTIO_F_VERSION_1};
use crate::virtio::{feature_bit, read_config_bytes, ActivateError, ActiveQueues, VirtioDevice};
use crate::{warn_guest, GuestMemory};

/// Settings of the balloon device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BalloonConfig {
    /// Offer free page reporting (and its queue).
    pub free_page_reporting: bool,
    /// Offer deflate-on-OOM.
    pub deflate_on_oom: bool,
}

/// The balloon device.
pub struct Balloon {
    config: BalloonConfig,
    discard: Arc<dyn DiscardMemory>,
    queue_sizes: Vec<u16>,
    queue_evts: Vec<EventFd>,
    active: Option<ActiveQueues>,
    /// `num_pages`: the balloon size the host asks for, in 4 KiB pages.
    target_pages: u32,
    /// `actual`: the balloon size the driver reports.
    actual_pages: u32,
    metrics: Arc<BalloonMetrics>,
}

/// Which queue a chain came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Inflate,
    Deflate,
    Report,
}

impl Balloon {
    /// A device returning memory through `discard`.
    pub fn new(
        config: BalloonConfig,
        discard: Arc<dyn DiscardMemory>,
    ) -> Result<Self, BalloonError> {
        let queues = if config.free_page_reporting { 3 } else { 2 };
        let queue_evts = (0..queues)
            .map(|_| EventFd::new(EFD_NONBLOCK).map_err(BalloonError::EventFd))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Balloon {
            config,
            discard,
            queue_sizes: vec![QUEUE_SIZE; queues],
            queue_evts,
            active: None,
            target_pages: 0,
            actual_pages: 0,
            metrics: Arc::new(BalloonMetrics::default()),
        })
    }

    /// The device's counters.
    pub fn metrics(&self) -> Arc<BalloonMetrics> {
        self.metrics.clone()
    }

    /// The balloon size the driver reports, in 4 KiB pages.
    pub fn actual_pages(&self) -> u32 {
        self.actual_pages
    }

    /// The balloon size asked of the guest, in 4 KiB pages.
    pub fn target_pages(&self) -> u32 {
        self.target_pages
    }

    /// Sets both sizes back (a restore): no configuration change is signalled, the driver
    /// already saw them.
    pub(super) fn restore_sizes(&mut self, target_pages: u32, actual_pages: u32) {
        self.target_pages = target_pages;
        self.actual_pages = actual_pages;
    }

    /// Asks the guest for a balloon of `pages` 4 KiB pages (a configuration change).
    pub fn set_target_pages(&mut self, pages: u32) {
        self.target_pages = pages;
        if let Some(active) = &self.active {
            active.interrupt.signal_config_change();
        }
    }

    pub(super) fn handle_queue_event(&mut self, idx: usize) {
        let Some(evt) = self.queue_evts.get(idx) else {
            return;
        };
        let _ = evt.read();
        let kind = match idx {
            INFLATEQ => Kind::Inflate,
            DEFLATEQ => Kind::Deflate,
            REPORTQ => Kind::Report,
            _ => return,
        };
        self.process_queue(idx, kind);
    }

    /// Gives the ranges back to the host.
    fn discard_ranges(&self, ranges: &[Range]) {
        for r in ranges {
            BalloonMetrics::inc(&self.metrics.discards);
            match self.discard.discard(r.addr, r.len) {
                Ok(n) => BalloonMetrics::add(&self.metrics.discarded_bytes, n),
                Err(e) => {
                    BalloonMetrics::inc(&self.metrics.discard_errors);
                    tracing::warn!(addr = r.addr.0, len = r.len, error = %e, "virtio-balloon: cannot discard guest memory");
                }
            }
        }
    }

    fn handle_chain(
        &self,
        mem: &GuestMemory,
        kind: Kind,
        buffers: chain::Buffers,
    ) -> Result<(), RequestError> {
        let m = &self.metrics;
        match kind {
            Kind::Inflate | Kind::Deflate => {
                let pfns = parse_pfns(mem, &buffers)?;
                let (ranges, bad) = in_memory(mem, pfn_ranges(&pfns));
                if bad > 0 {
                    BalloonMetrics::add(&m.bad_ranges, bad as u64);
                    warn_guest!(bad, "virtio-balloon: pages outside guest memory");
                }
                let pages: u64 = ranges.iter().map(|r| r.len / super::defs::PAGE_SIZE).sum();
                if kind == Kind::Inflate {
                    BalloonMetrics::add(&m.inflated_pages, pages);
                    self.discard_ranges(&ranges);
                } else {
                    BalloonMetrics::add(&m.deflated_pages, pages);
                }
            }
            Kind::Report => {
                let ranges = report_ranges(&buffers)?;
                BalloonMetrics::inc(&m.reports);
                BalloonMetrics::add(&m.reported_ranges, ranges.len() as u64);
                BalloonMetrics::add(&m.reported_bytes, ranges.iter().map(|r| r.len).sum());
                self.discard_ranges(&ranges);
            }
        }
        Ok(())
    }

    fn process_queue(&mut self, idx: usize, kind: Kind) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let mem = active.mem.clone();
        let mut completed = Vec::new();
        let mut broken = false;
        {
            let queue = &mut active.queues[idx];
            loop {
                match queue.avail_idx(&mem, Ordering::Acquire) {
                    Ok(avail) if (avail - Wrapping(queue.next_avail())).0 <= queue.size() => {}
                    _ => {
                        broken = true;
                        break;
                    }
                }
                let Some(desc_chain) = queue.pop_descriptor_chain(&mem) else {
                    break;
                };
                completed.push((
                    desc_chain.head_index(),
                    chain::collect(desc_chain, &mem, usize::from(QUEUE_SIZE)),
                ));
            }
        }
        for (_, collected) in completed.iter_mut() {
            let result = match std::mem::replace(collected, Err(ChainError::Unterminated)) {
                Ok(buffers) => self
                    .handle_chain(&mem, kind, buffers)
                    .map_err(|e| e.to_string()),
                Err(e @ ChainError::OutOfMemory { .. }) => {
                    BalloonMetrics::inc(&self.metrics.bad_ranges);
                    Err(e.to_string())
                }
                Err(e) => Err(e.to_string()),
            };
            if let Err(e) = result {
                BalloonMetrics::inc(&self.metrics.malformed_chains);
                warn_guest!(queue = idx, error = %e, "virtio-balloon: malformed request");
            }
        }
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let queue = &mut active.queues[idx];
        for (head, _) in &completed {
            if queue.add_used(&mem, *head, 0).is_err() {
                broken = true;
                break;
            }
        }
        if broken {
            warn_guest!(
                queue = idx,
                "virtio-balloon: invalid queue state; device needs reset"
            );
            BalloonMetrics::inc(&self.metrics.needs_reset);
            active.interrupt.set_needs_reset();
        }
        if !completed.is_empty() && queue.needs_notification(&mem).unwrap_or(true) {
            active.interrupt.signal_used_queue();
        }
    }
}

impl VirtioDevice for Balloon {
    fn queue_progress(&self) -> Option<Vec<(u16, u16)>> {
        self.active
            .as_ref()
            .map(|a| crate::virtio::persist::progress_of(&a.queues))
    }

    fn save_state(&self) -> serde_json::Value {
        self.state()
    }

    fn restore_state(&mut self, state: &serde_json::Value) -> Result<(), String> {
        self.set_state(state)
    }

    fn device_type(&self) -> u32 {
        device_type::BALLOON
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn active_queue_count(&self, acked_features: u64) -> usize {
        let reporting = feature_bit(VIRTIO_BALLOON_F_FREE_PAGE_REPORTING);
        if self.config.free_page_reporting && acked_features & reporting != 0 {
            3
        } else {
            2
        }
    }

    fn avail_features(&self) -> u64 {
        let mut f = feature_bit(VIRTIO_F_VERSION_1);
        if self.config.free_page_reporting {
            f |= feature_bit(VIRTIO_BALLOON_F_FREE_PAGE_REPORTING);
        }
        if self.config.deflate_on_oom {
            f |= feature_bit(VIRTIO_BALLOON_F_DEFLATE_ON_OOM);
        }
        f
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let mut config = [0u8; CONFIG_LEN];
        config[0..4].copy_from_slice(&self.target_pages.to_le_bytes());
        config[4..8].copy_from_slice(&self.actual_pages.to_le_bytes());
        read_config_bytes(&config, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        if offset == CONFIG_ACTUAL && data.len() == 4 {
            self.actual_pages = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
            return;
        }
        BalloonMetrics::inc(&self.metrics.bad_config_writes);
        warn_guest!(
            offset,
            len = data.len(),
            "virtio-balloon: write of a read-only config field"
        );
    }

    fn activate(&mut self, active: ActiveQueues) -> Result<(), ActivateError> {
        let expected = self.active_queue_count(active.acked_features);
        if active.queues.len() != expected {
            return Err(ActivateError::QueueCount {
                expected,
                got: active.queues.len(),
            });
        }
        self.active = Some(active);
        for idx in 0..expected {
            let kind = [Kind::Inflate, Kind::Deflate, Kind::Report][idx];
            self.process_queue(idx, kind);
        }
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
    }

    fn is_activated(&self) -> bool {
        self.active.is_some()
    }

    fn queue_events(&self) -> &[EventFd] {
        &self.queue_evts
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};

    use super::*;
    use crate::interrupt::NoInterrupt;
    use crate::virtio::chain::test_utils::{chain_descs, memory, Desc};
    use crate::virtio::VirtioInterrupt;

    #[derive(Default)]
    struct Recorder(Mutex<Vec<(u64, u64)>>);

    impl DiscardMemory for Recorder {
        fn discard(&self, guest_addr: GuestAddress, len: u64) -> std::io::Result<u64> {
            self.0.lock().unwrap().push((guest_addr.0, len));
            Ok(len)
        }
    }

    fn count(c: &std::sync::atomic::AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }

    fn add(q: &MockSplitQueue<'_, GuestMemory>, next: &mut u16, descs: &[Desc]) {
        q.add_desc_chains(&chain_descs(descs, *next), *next)
            .unwrap();
        *next += descs.len() as u16;
    }

    fn used_lens(q: &MockSplitQueue<'_, GuestMemory>) -> usize {
        usize::from(q.used().idx().load())
    }

    fn balloon(reporting: bool) -> (Balloon, Arc<Recorder>) {
        let rec = Arc::new(Recorder::default());
        let b = Balloon::new(
            BalloonConfig {
                free_page_reporting: reporting,
                deflate_on_oom: false,
            },
            rec.clone(),
        )
        .unwrap();
        (b, rec)
    }

    fn activate(
        b: &mut Balloon,
        mem: &GuestMemory,
        qs: &[&MockSplitQueue<'_, GuestMemory>],
        acked: u64,
    ) {
        b.activate(ActiveQueues {
            mem: mem.clone(),
            queues: qs.iter().map(|q| q.create_queue().unwrap()).collect(),
            interrupt: Arc::new(VirtioInterrupt::new(Arc::new(NoInterrupt))),
            acked_features: acked,
        })
        .unwrap();
    }

    #[test]
    fn test_inflate_discards_pages_inside_memory_only() {
        let mem = memory();
        let (mut b, rec) = balloon(false);
        let inflate = MockSplitQueue::create(&mem, GuestAddress(0x1000), 16);
        let deflate = MockSplitQueue::create(&mem, GuestAddress(0x2000), 16);
        let pfns: Vec<u8> = [0x100u32, 0x101, 0x5000, 0x200]
            .iter()
            .flat_map(|p| p.to_le_bytes())
            .collect();
        mem.write_slice(&pfns, GuestAddress(0x10000)).unwrap();
        let mut n = 0;
        add(&inflate, &mut n, &[(0x10000, 16, false)]);
        add(&inflate, &mut n, &[(0x10000, 6, false)]); // not whole entries
        add(&inflate, &mut n, &[(0x10000, 4, true)]); // wrong direction
        let mut d = 0;
        add(&deflate, &mut d, &[(0x10000, 8, false)]);
        activate(&mut b, &mem, &[&inflate, &deflate], 1 << 32);
        assert_eq!(
            *rec.0.lock().unwrap(),
            vec![(0x100000, 8192), (0x200000, 4096)]
        );
        assert_eq!(used_lens(&inflate), 3);
        assert_eq!(used_lens(&deflate), 1);
        let m = b.metrics();
        assert_eq!(count(&m.inflated_pages), 3);
        assert_eq!(count(&m.deflated_pages), 2);
        assert_eq!(count(&m.bad_ranges), 1);
        assert_eq!(count(&m.malformed_chains), 2);
        assert_eq!(count(&m.discarded_bytes), 3 * 4096);
    }

    #[test]
    fn test_free_page_reports_are_discarded() {
        let mem = memory();
        let (mut b, rec) = balloon(true);
        assert_eq!(b.queue_max_sizes().len(), 3);
        assert_eq!(b.avail_features(), (1 << 32) | (1 << 5));
        let qs: Vec<_> = (0..3u64)
            .map(|i| MockSplitQueue::create(&mem, GuestAddress(0x1000 * (i + 1)), 16))
            .collect();
        let mut n = 0;
        add(
            &qs[2],
            &mut n,
            &[(0x200000, 0x200000, true), (0x600000, 0x400000, true)],
        );
        add(&qs[2], &mut n, &[(0xe00000, 0x400000, true)]); // crosses the end of memory
        add(&qs[2], &mut n, &[(0x400000, 0x1000, false)]); // readable
        activate(
            &mut b,
            &mem,
            &[&qs[0], &qs[1], &qs[2]],
            (1 << 32) | (1 << 5),
        );
        assert_eq!(
            *rec.0.lock().unwrap(),
            vec![(0x200000, 0x200000), (0x600000, 0x400000)]
        );
        assert_eq!(used_lens(&qs[2]), 3);
        let m = b.metrics();
        assert_eq!(count(&m.reports), 1);
        assert_eq!(count(&m.reported_ranges), 2);
        assert_eq!(count(&m.reported_bytes), 0x600000);
        assert_eq!(count(&m.bad_ranges), 1);
        assert_eq!(count(&m.malformed_chains), 2);
    }

    #[test]
    fn test_reporting_queue_only_with_the_feature() {
        let mem = memory();
        let (mut b, _) = balloon(true);
        assert_eq!(b.active_queue_count(1 << 32), 2);
        assert_eq!(b.active_queue_count((1 << 32) | (1 << 5)), 3);
        let q0 = MockSplitQueue::create(&mem, GuestAddress(0x1000), 16);
        let q1 = MockSplitQueue::create(&mem, GuestAddress(0x2000), 16);
        // The driver declined reporting: two queues are enough.
        activate(&mut b, &mem, &[&q0, &q1], 1 << 32);
        b.reset();
        // It accepted reporting but set up two queues: refused.
        assert!(b
            .activate(ActiveQueues {
                mem: mem.clone(),
                queues: vec![q0.create_queue().unwrap(), q1.create_queue().unwrap()],
                interrupt: Arc::new(VirtioInterrupt::new(Arc::new(NoInterrupt))),
                acked_features: (1 << 32) | (1 << 5),
            })
            .is_err());
        let (b2, _) = balloon(false);
        assert_eq!(b2.queue_max_sizes().len(), 2);
        assert_eq!(b2.active_queue_count((1 << 32) | (1 << 5)), 2);
    }

    #[test]
    fn test_config_space() {
        let (mut b, _) = balloon(false);
        b.set_target_pages(1234);
        b.write_config(4, &77u32.to_le_bytes());
        b.write_config(0, &1u32.to_le_bytes()); // num_pages is the host's
        let mut cfg = [0u8; 8];
        b.read_config(0, &mut cfg);
        assert_eq!(u32::from_le_bytes(cfg[..4].try_into().unwrap()), 1234);
        assert_eq!(u32::from_le_bytes(cfg[4..].try_into().unwrap()), 77);
        assert_eq!(b.actual_pages(), 77);
        assert_eq!(count(&b.metrics().bad_config_writes), 1);
    }
}
