//! The virtio-net device: the rx/tx queues on one side, a [`NetBackend`] on the other.

use std::collections::VecDeque;
use std::num::Wrapping;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use virtio_queue::{QueueOwnedT, QueueT};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::backend::{BackendError, NetBackend, RecvStatus, SendStatus};
use super::defs::{S_LINK_UP, VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF};
use super::metrics::NetMetrics;
use super::packet::{parse_tx, rx_chain_usable, rx_chains_needed, write_rx, TxError};
use super::{NetError, QUEUE_SIZES, RXQ, RX_PENDING_BYTES, RX_PENDING_FRAMES, TXQ};
use crate::virtio::chain::{self, Segment};
use crate::virtio::defs::{device_type, features::VIRTIO_F_VERSION_1};
use crate::virtio::{feature_bit, read_config_bytes, ActivateError, ActiveQueues, VirtioDevice};
use crate::warn_guest;

/// Settings of the net device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetConfig {
    /// The guest's MAC address.
    pub mac: [u8; 6],
}

/// A receive chain taken from the queue and validated, not used yet.
struct RxChain {
    head: u16,
    segs: Vec<Segment>,
    cap: u64,
}

/// What became of a frame offered to the guest.
enum Delivery {
    /// Written to the guest.
    Done,
    /// The guest has no (or not enough) receive buffers now.
    NoBuffers,
    /// The frame can never fit the guest's buffers; it was dropped.
    Dropped,
    /// The queue is broken; the device needs a reset.
    Broken,
}

/// The net device.
pub struct Net {
    mac: [u8; 6],
    backend: Box<dyn NetBackend>,
    backend_alive: bool,
    /// The backend reported a hang-up: stop polling it while nothing can be read.
    backend_hup: bool,
    /// Epoll interest registered for the backend (`None`: not registered).
    pub(super) backend_registered: Option<EventSet>,
    queue_evts: Vec<EventFd>,
    active: Option<ActiveQueues>,
    mrg_rxbuf: bool,
    /// Frames from the backend waiting for receive buffers.
    pending_rx: VecDeque<Vec<u8>>,
    pending_rx_bytes: usize,
    /// Receive chains popped from the queue and not used yet.
    rx_chains: VecDeque<RxChain>,
    /// The backend refused a frame: transmit waits for it to drain.
    tx_blocked: bool,
    frame_buf: Vec<u8>,
    metrics: Arc<NetMetrics>,
}

fn avail_ok(active: &mut ActiveQueues, idx: usize, metrics: &NetMetrics) -> bool {
    let mem = &active.mem;
    let queue = &active.queues[idx];
    match queue.avail_idx(mem, Ordering::Acquire) {
        Ok(avail) if (avail - Wrapping(queue.next_avail())).0 <= queue.size() => true,
        _ => {
            warn_guest!(
                queue = idx,
                "virtio-net: invalid avail index; device needs reset"
            );
            NetMetrics::inc(&metrics.needs_reset);
            active.interrupt.set_needs_reset();
            false
        }
    }
}

fn log_backend_failure(kind: &str, e: &BackendError, metrics: &NetMetrics) {
    tracing::error!(backend = kind, error = %e, "virtio-net: backend failed; frames are dropped from now on");
    NetMetrics::inc(&metrics.backend_errors);
}

impl Net {
    /// A device with `config` in front of `backend`.
    pub fn new(config: NetConfig, backend: Box<dyn NetBackend>) -> Result<Self, NetError> {
        let queue_evts = (0..QUEUE_SIZES.len())
            .map(|_| EventFd::new(EFD_NONBLOCK).map_err(NetError::EventFd))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Net {
            mac: config.mac,
            backend,
            backend_alive: true,
            backend_hup: false,
            backend_registered: None,
            queue_evts,
            active: None,
            mrg_rxbuf: false,
            pending_rx: VecDeque::new(),
            pending_rx_bytes: 0,
            rx_chains: VecDeque::new(),
            tx_blocked: false,
            frame_buf: Vec::new(),
            metrics: Arc::new(NetMetrics::default()),
        })
    }

    /// The device's counters.
    pub fn metrics(&self) -> Arc<NetMetrics> {
        self.metrics.clone()
    }

    /// The backend's descriptor.
    pub(super) fn backend_fd(&self) -> std::os::fd::RawFd {
        self.backend.raw_fd()
    }

    fn rx_full(&self) -> bool {
        self.pending_rx.len() >= RX_PENDING_FRAMES || self.pending_rx_bytes >= RX_PENDING_BYTES
    }

    /// The epoll interest the backend needs now; `None` when it must not be polled.
    pub(super) fn backend_interest(&self) -> Option<EventSet> {
        if !self.backend_alive {
            return None;
        }
        let mut set = EventSet::empty();
        if !self.rx_full() {
            set |= EventSet::IN;
        }
        if self.backend.has_pending_output() {
            set |= EventSet::OUT;
        }
        // A hung-up descriptor is always ready: keep it out of epoll while nothing is wanted.
        if self.backend_hup && set.is_empty() {
            return None;
        }
        Some(set)
    }

    fn backend_failed(&mut self, e: &BackendError) {
        log_backend_failure(self.backend.kind(), e, &self.metrics);
        self.backend_alive = false;
        self.tx_blocked = false;
    }

    pub(super) fn drain_queue_event(&self, idx: usize) {
        let _ = self.queue_evts[idx].read();
    }

    /// The backend's descriptor is ready (`set`).
    pub(super) fn handle_backend_event(&mut self, set: EventSet) {
        if set.intersects(EventSet::HANG_UP | EventSet::READ_HANG_UP | EventSet::ERROR) {
            self.backend_hup = true;
        }
        if self.backend_alive && set.contains(EventSet::OUT) {
            if let Err(e) = self.backend.flush() {
                self.backend_failed(&e);
            }
        }
        if (self.tx_blocked && !self.backend.has_pending_output()) || !self.backend_alive {
            self.tx_blocked = false;
            self.process_tx();
        }
        self.process_rx();
    }

    /// Sends every frame the guest queued, until the backend is full.
    pub fn process_tx(&mut self) {
        if self.tx_blocked {
            return;
        }
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let mem = active.mem.clone();
        let metrics = &self.metrics;
        let mut used = false;
        let mut failure = None;
        while avail_ok(active, TXQ, metrics) {
            let queue = &mut active.queues[TXQ];
            let Some(desc_chain) = queue.pop_descriptor_chain(&mem) else {
                break;
            };
            let head = desc_chain.head_index();
            let parsed = match chain::collect(desc_chain, &mem, usize::from(QUEUE_SIZES[TXQ])) {
                Ok(buffers) => parse_tx(&mem, &buffers, &mut self.frame_buf),
                Err(e) => {
                    NetMetrics::inc(&metrics.tx_bad_descriptors);
                    warn_guest!(error = %e, "virtio-net: malformed transmit chain");
                    Err(TxError::Memory)
                }
            };
            match parsed {
                Ok(_) if !self.backend_alive => NetMetrics::inc(&metrics.tx_dropped_backend),
                Ok(_) => match self.backend.send(&self.frame_buf) {
                    Ok(SendStatus::Sent) => {
                        NetMetrics::inc(&metrics.tx_frames);
                        NetMetrics::add(&metrics.tx_bytes, self.frame_buf.len() as u64);
                    }
                    Ok(SendStatus::Full) => {
                        // Retry this chain once the backend drained.
                        queue.go_to_previous_position();
                        NetMetrics::inc(&metrics.tx_backend_full);
                        self.tx_blocked = true;
                        break;
                    }
                    Ok(SendStatus::Dropped) => NetMetrics::inc(&metrics.tx_dropped_backend),
                    Err(e) => {
                        NetMetrics::inc(&metrics.tx_dropped_backend);
                        failure = Some(e);
                        self.backend_alive = false;
                    }
                },
                Err(TxError::Oversized(len)) => {
                    NetMetrics::inc(&metrics.tx_dropped_oversized);
                    warn_guest!(
                        len,
                        "virtio-net: dropping an oversized frame from the guest"
                    );
                }
                Err(TxError::Runt(len)) => {
                    NetMetrics::inc(&metrics.tx_dropped_runt);
                    warn_guest!(len, "virtio-net: dropping a runt frame from the guest");
                }
                Err(e @ TxError::BadHeader { .. }) => {
                    NetMetrics::inc(&metrics.tx_bad_headers);
                    warn_guest!(error = %e, "virtio-net: dropping a frame with a bad header");
                }
                // Chain errors were counted above.
                Err(TxError::Memory) => {}
                Err(e) => {
                    NetMetrics::inc(&metrics.tx_bad_descriptors);
                    warn_guest!(error = %e, "virtio-net: malformed transmit chain");
                }
            }
            if queue.add_used(&mem, head, 0).is_err() {
                NetMetrics::inc(&metrics.needs_reset);
                active.interrupt.set_needs_reset();
                break;
            }
            used = true;
        }
        if used && active.queues[TXQ].needs_notification(&mem).unwrap_or(true) {
            active.interrupt.signal_used_queue();
        }
        if let Some(e) = failure {
            log_backend_failure(self.backend.kind(), &e, metrics);
        }
    }

    /// Offers `frame` to the guest.
    fn deliver(
        active: &mut ActiveQueues,
        rx_chains: &mut VecDeque<RxChain>,
        mrg_rxbuf: bool,
        frame: &[u8],
        metrics: &NetMetrics,
        used: &mut bool,
    ) -> Delivery {
        let mem = active.mem.clone();
        let needed = loop {
            let usable = if mrg_rxbuf {
                rx_chains.len()
            } else {
                rx_chains.len().min(1)
            };
            let caps: Vec<u64> = rx_chains.iter().take(usable).map(|c| c.cap).collect();
            if let Some(n) = rx_chains_needed(&caps, frame.len()) {
                break n;
            }
            let queue_size = usize::from(active.queues[RXQ].size());
            if (!mrg_rxbuf && usable == 1) || rx_chains.len() >= queue_size {
                // Even every buffer the guest can post would not hold it.
                NetMetrics::inc(&metrics.rx_dropped_oversized);
                warn_guest!(
                    len = frame.len(),
                    "virtio-net: frame larger than the guest's receive buffers; dropped"
                );
                return Delivery::Dropped;
            }
            if !avail_ok(active, RXQ, metrics) {
                return Delivery::Broken;
            }
            let queue = &mut active.queues[RXQ];
            let Some(desc_chain) = queue.pop_descriptor_chain(&mem) else {
                return Delivery::NoBuffers;
            };
            let head = desc_chain.head_index();
            match chain::collect(desc_chain, &mem, usize::from(QUEUE_SIZES[RXQ])) {
                Ok(b) if rx_chain_usable(&b) => {
                    let cap = b.writable_len();
                    rx_chains.push_back(RxChain {
                        head,
                        segs: b.writable,
                        cap,
                    });
                }
                other => {
                    NetMetrics::inc(&metrics.rx_bad_descriptors);
                    match other {
                        Err(e) => warn_guest!(error = %e, "virtio-net: malformed receive chain"),
                        Ok(_) => warn_guest!("virtio-net: receive chain with readable buffers or shorter than a header"),
                    }
                    if queue.add_used(&mem, head, 0).is_err() {
                        NetMetrics::inc(&metrics.needs_reset);
                        active.interrupt.set_needs_reset();
                        return Delivery::Broken;
                    }
                    *used = true;
                }
            }
        };
        let chains: Vec<RxChain> = rx_chains.drain(..needed).collect();
        let segs: Vec<&[Segment]> = chains.iter().map(|c| c.segs.as_slice()).collect();
        let lens = match write_rx(&mem, &segs, frame) {
            Ok(lens) => lens,
            Err(e) => {
                NetMetrics::inc(&metrics.rx_bad_descriptors);
                warn_guest!(error = %e, "virtio-net: cannot write a frame to guest memory");
                vec![0; chains.len()]
            }
        };
        let queue = &mut active.queues[RXQ];
        for (i, c) in chains.iter().enumerate() {
            let len = lens.get(i).copied().unwrap_or(0);
            if queue.add_used(&mem, c.head, len).is_err() {
                NetMetrics::inc(&metrics.needs_reset);
                active.interrupt.set_needs_reset();
                return Delivery::Broken;
            }
        }
        *used = true;
        NetMetrics::inc(&metrics.rx_frames);
        NetMetrics::add(&metrics.rx_bytes, frame.len() as u64);
        Delivery::Done
    }

    /// Gives held frames to the guest, then reads the backend while there is room to hold
    /// frames.
    pub fn process_rx(&mut self) {
        let mut used = false;
        loop {
            while let Some(frame) = self.pending_rx.front() {
                let Some(active) = self.active.as_mut() else {
                    break;
                };
                let len = frame.len();
                match Self::deliver(
                    active,
                    &mut self.rx_chains,
                    self.mrg_rxbuf,
                    frame,
                    &self.metrics,
                    &mut used,
                ) {
                    Delivery::Done | Delivery::Dropped => {
                        self.pending_rx.pop_front();
                        self.pending_rx_bytes -= len;
                    }
                    Delivery::NoBuffers => break,
                    Delivery::Broken => {
                        self.pending_rx.clear();
                        self.pending_rx_bytes = 0;
                        break;
                    }
                }
            }
            if !self.backend_alive {
                break;
            }
            if self.rx_full() {
                NetMetrics::inc(&self.metrics.rx_pending_full);
                break;
            }
            match self.backend.recv(&mut self.frame_buf) {
                Ok(RecvStatus::Frame) => {
                    if self.active.is_none() {
                        NetMetrics::inc(&self.metrics.rx_dropped_inactive);
                        continue;
                    }
                    let frame = std::mem::take(&mut self.frame_buf);
                    self.pending_rx_bytes += frame.len();
                    self.pending_rx.push_back(frame);
                }
                Ok(RecvStatus::Empty) => break,
                Ok(RecvStatus::Oversized(len)) => {
                    NetMetrics::inc(&self.metrics.rx_dropped_oversized);
                    tracing::warn!(
                        len,
                        "virtio-net: dropping an oversized frame from the backend"
                    );
                }
                Ok(RecvStatus::Runt(len)) => {
                    NetMetrics::inc(&self.metrics.rx_dropped_runt);
                    tracing::warn!(len, "virtio-net: dropping a runt frame from the backend");
                }
                Err(e) => {
                    self.backend_failed(&e);
                    break;
                }
            }
        }
        if let Some(active) = self.active.as_mut() {
            if used
                && active.queues[RXQ]
                    .needs_notification(&active.mem)
                    .unwrap_or(true)
            {
                active.interrupt.signal_used_queue();
            }
        }
    }
}

impl VirtioDevice for Net {
    fn queue_progress(&self) -> Option<Vec<(u16, u16)>> {
        let active = self.active.as_ref()?;
        let mut progress = crate::virtio::persist::progress_of(&active.queues);
        // Receive chains taken from the ring but not used yet are given back: a restored
        // device takes them again (the frames waiting for them are dropped, as a network may).
        if let Some((next_avail, _)) = progress.get_mut(RXQ) {
            *next_avail = next_avail.wrapping_sub(self.rx_chains.len() as u16);
        }
        Some(progress)
    }

    fn device_type(&self) -> u32 {
        device_type::NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn avail_features(&self) -> u64 {
        feature_bit(VIRTIO_F_VERSION_1)
            | feature_bit(VIRTIO_NET_F_MAC)
            | feature_bit(VIRTIO_NET_F_MRG_RXBUF)
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // mac, status, max_virtqueue_pairs (5.1.4).
        let mut config = [0u8; 10];
        config[..6].copy_from_slice(&self.mac);
        config[6..8].copy_from_slice(&S_LINK_UP.to_le_bytes());
        config[8..10].copy_from_slice(&1u16.to_le_bytes());
        read_config_bytes(&config, offset, data);
    }

    fn activate(&mut self, active: ActiveQueues) -> Result<(), ActivateError> {
        if active.queues.len() != QUEUE_SIZES.len() {
            return Err(ActivateError::QueueCount {
                expected: QUEUE_SIZES.len(),
                got: active.queues.len(),
            });
        }
        self.mrg_rxbuf = active.acked_features & feature_bit(VIRTIO_NET_F_MRG_RXBUF) != 0;
        self.active = Some(active);
        // Let the event loop look at both queues: it also owns the backend's epoll interest.
        for evt in &self.queue_evts {
            evt.write(1).map_err(ActivateError::Backend)?;
        }
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
        self.mrg_rxbuf = false;
        self.pending_rx.clear();
        self.pending_rx_bytes = 0;
        self.rx_chains.clear();
        self.tx_blocked = false;
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
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    use std::sync::atomic::AtomicU64;

    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Address, Bytes, GuestAddress};

    use super::*;
    use crate::interrupt::NoInterrupt;
    use crate::virtio::chain::test_utils::{chain_descs, memory, Desc};
    use crate::virtio::net::backend::StreamBackend;
    use crate::virtio::net::defs::{HDR_LEN, MAX_BUFFER_LEN};
    use crate::virtio::net::packet::NetHeader;
    use crate::virtio::VirtioInterrupt;
    use crate::GuestMemory;

    /// The mock places its used ring 16 bytes after the start of the avail ring, on top of
    /// avail entries 6 and up (virtio-queue 0.18's `SplitQueueRing::end` counts elements, not
    /// bytes); tests that post many chains move the used ring 0x800 bytes past the table.
    fn used_ring_addr(q: &MockSplitQueue<'_, GuestMemory>) -> GuestAddress {
        q.desc_table_addr().unchecked_add(0x800)
    }

    fn queue(q: &MockSplitQueue<'_, GuestMemory>) -> virtio_queue::Queue {
        let mut queue: virtio_queue::Queue = q.create_queue().unwrap();
        queue.try_set_used_ring_address(used_ring_addr(q)).unwrap();
        queue
    }

    struct Harness<'a> {
        mem: &'a GuestMemory,
        rxq: MockSplitQueue<'a, GuestMemory>,
        txq: MockSplitQueue<'a, GuestMemory>,
        rx_next: u16,
        tx_next: u16,
        net: Net,
        peer: UnixStream,
    }

    impl<'a> Harness<'a> {
        fn new(mem: &'a GuestMemory, mrg_rxbuf: bool) -> Self {
            let (backend, peer) = StreamBackend::pair().unwrap();
            peer.set_read_timeout(Some(std::time::Duration::from_secs(5)))
                .unwrap();
            let mut net = Net::new(
                NetConfig {
                    mac: [2, 0, 0, 0, 0, 1],
                },
                Box::new(backend),
            )
            .unwrap();
            let rxq = MockSplitQueue::create(mem, GuestAddress(0x1000), 16);
            let txq = MockSplitQueue::create(mem, GuestAddress(0x4000), 16);
            let mut acked = feature_bit(VIRTIO_F_VERSION_1) | feature_bit(VIRTIO_NET_F_MAC);
            if mrg_rxbuf {
                acked |= feature_bit(VIRTIO_NET_F_MRG_RXBUF);
            }
            net.activate(ActiveQueues {
                mem: mem.clone(),
                queues: vec![queue(&rxq), queue(&txq)],
                interrupt: Arc::new(VirtioInterrupt::new(Arc::new(NoInterrupt))),
                acked_features: acked,
            })
            .unwrap();
            Harness {
                mem,
                rxq,
                txq,
                rx_next: 0,
                tx_next: 0,
                net,
                peer,
            }
        }

        fn add_rx(&mut self, descs: &[Desc]) {
            self.rxq
                .add_desc_chains(&chain_descs(descs, self.rx_next), self.rx_next)
                .unwrap();
            self.rx_next += descs.len() as u16;
        }

        fn add_tx(&mut self, descs: &[Desc]) {
            self.txq
                .add_desc_chains(&chain_descs(descs, self.tx_next), self.tx_next)
                .unwrap();
            self.tx_next += descs.len() as u16;
        }

        /// Puts header + frame at `addr` and queues it as one descriptor.
        fn send(&mut self, addr: u64, header: NetHeader, frame: &[u8]) {
            self.mem
                .write_slice(&header.to_bytes(), GuestAddress(addr))
                .unwrap();
            self.mem
                .write_slice(frame, GuestAddress(addr + HDR_LEN as u64))
                .unwrap();
            self.add_tx(&[(addr, (HDR_LEN + frame.len()) as u32, false)]);
        }

        /// The used ring (see [`queue`]) as (id, len) pairs.
        fn used(&self, q: &MockSplitQueue<'_, GuestMemory>) -> Vec<(u32, u32)> {
            let used = used_ring_addr(q);
            let m = self.mem;
            let n: u16 = m.read_obj(used.unchecked_add(2)).unwrap();
            (0..u64::from(n))
                .map(|i| {
                    let at = used.unchecked_add(4 + 8 * i);
                    let id: u32 = m.read_obj(at).unwrap();
                    let len: u32 = m.read_obj(at.unchecked_add(4)).unwrap();
                    (id, len)
                })
                .collect()
        }

        fn peer_frame(&mut self) -> Vec<u8> {
            let mut len = [0u8; 4];
            self.peer.read_exact(&mut len).unwrap();
            let mut frame = vec![0u8; u32::from_be_bytes(len) as usize];
            self.peer.read_exact(&mut frame).unwrap();
            frame
        }

        fn peer_send(&mut self, frame: &[u8]) {
            self.peer
                .write_all(&(frame.len() as u32).to_be_bytes())
                .unwrap();
            self.peer.write_all(frame).unwrap();
        }
    }

    fn count(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }

    fn frame(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    #[test]
    fn test_tx_frame_reaches_backend() {
        let mem = memory();
        let mut h = Harness::new(&mem, false);
        let f = frame(1514, 1);
        h.send(0x10000, NetHeader::default(), &f);
        h.net.process_tx();
        assert_eq!(h.peer_frame(), f);
        assert_eq!(h.used(&h.txq), vec![(0, 0)]);
        let m = h.net.metrics();
        assert_eq!(count(&m.tx_frames), 1);
        assert_eq!(count(&m.tx_bytes), 1514);
    }

    #[test]
    fn test_tx_drops_malformed_chains_and_counts_them() {
        let mem = memory();
        let mut h = Harness::new(&mem, false);
        // Oversized: header + 65551-byte frame, over two descriptors.
        mem.write_slice(&[0u8; HDR_LEN], GuestAddress(0x100000))
            .unwrap();
        h.add_tx(&[
            (0x100000, 65536, false),
            (0x200000, (MAX_BUFFER_LEN + 1 - 65536) as u32, false),
        ]);
        // Offload request that was not negotiated.
        h.send(
            0x10000,
            NetHeader {
                flags: 1,
                ..NetHeader::default()
            },
            &frame(60, 2),
        );
        // A runt.
        h.send(0x11000, NetHeader::default(), &frame(13, 3));
        // A writable buffer in a transmit chain.
        h.add_tx(&[(0x12000, 72, false), (0x13000, 64, true)]);
        // A buffer outside guest memory.
        h.add_tx(&[((16 << 20) - 16, 72, false)]);
        // Then a good frame.
        let good = frame(60, 9);
        h.send(0x14000, NetHeader::default(), &good);
        h.net.process_tx();
        assert_eq!(h.peer_frame(), good);
        let used = h.used(&h.txq);
        assert_eq!(used.len(), 6, "{used:?}");
        assert!(used.iter().all(|&(_, len)| len == 0));
        let m = h.net.metrics();
        assert_eq!(count(&m.tx_dropped_oversized), 1);
        assert_eq!(count(&m.tx_bad_headers), 1);
        assert_eq!(count(&m.tx_dropped_runt), 1);
        assert_eq!(count(&m.tx_bad_descriptors), 2);
        assert_eq!(count(&m.tx_frames), 1);
        // Nothing else reached the backend.
        h.peer.set_nonblocking(true).unwrap();
        let mut b = [0u8; 1];
        assert!(h.peer.read(&mut b).is_err());
    }

    #[test]
    fn test_rx_waits_for_buffers_then_merges_them() {
        let mem = memory();
        let mut h = Harness::new(&mem, true);
        let f = frame(3000, 4);
        h.peer_send(&f);
        // No receive buffers yet: the frame waits, nothing is used.
        h.net.process_rx();
        assert!(h.used(&h.rxq).is_empty());
        assert_eq!(h.net.pending_rx.len(), 1);
        h.add_rx(&[(0x10000, 2048, true)]);
        h.add_rx(&[(0x20000, 1024, true), (0x30000, 1024, true)]);
        h.add_rx(&[(0x40000, 2048, true)]);
        h.net.process_rx();
        assert_eq!(h.used(&h.rxq), vec![(0, 2048), (1, 3012 - 2048)]);
        let mut hdr = [0u8; HDR_LEN];
        mem.read_slice(&mut hdr, GuestAddress(0x10000)).unwrap();
        assert_eq!(NetHeader::from_bytes(&hdr).num_buffers, 2);
        let mut got = vec![0u8; 3000];
        mem.read_slice(&mut got[..2036], GuestAddress(0x10000 + HDR_LEN as u64))
            .unwrap();
        mem.read_slice(&mut got[2036..], GuestAddress(0x20000))
            .unwrap();
        assert_eq!(got, f);
        // The third chain stays for the next frame.
        let g = frame(100, 5);
        h.peer_send(&g);
        h.net.process_rx();
        assert_eq!(h.used(&h.rxq).last(), Some(&(3, 112)));
        let m = h.net.metrics();
        assert_eq!(count(&m.rx_frames), 2);
        assert_eq!(count(&m.rx_bytes), 3100);
    }

    #[test]
    fn test_rx_without_mrg_drops_frames_larger_than_a_buffer() {
        let mem = memory();
        let mut h = Harness::new(&mem, false);
        h.add_rx(&[(0x10000, 1526, true)]);
        h.peer_send(&frame(1515, 6));
        let small = frame(60, 7);
        h.peer_send(&small);
        h.net.process_rx();
        assert_eq!(h.used(&h.rxq), vec![(0, 72)]);
        let mut hdr = [0u8; HDR_LEN];
        mem.read_slice(&mut hdr, GuestAddress(0x10000)).unwrap();
        assert_eq!(NetHeader::from_bytes(&hdr).num_buffers, 1);
        let m = h.net.metrics();
        assert_eq!(count(&m.rx_dropped_oversized), 1);
        assert_eq!(count(&m.rx_frames), 1);
    }

    #[test]
    fn test_rx_refuses_bad_chains() {
        let mem = memory();
        let mut h = Harness::new(&mem, true);
        h.add_rx(&[(0x10000, 2048, false)]); // readable
        h.add_rx(&[(0x20000, 8, true)]); // shorter than a header
        h.add_rx(&[((16 << 20) - 8, 2048, true)]); // outside memory
        h.add_rx(&[(0x30000, 2048, true)]);
        h.peer_send(&frame(60, 8));
        h.net.process_rx();
        assert_eq!(h.used(&h.rxq), vec![(0, 0), (1, 0), (2, 0), (3, 72)]);
        assert_eq!(count(&h.net.metrics().rx_bad_descriptors), 3);
    }

    #[test]
    fn test_rx_holds_a_bounded_number_of_frames() {
        let mem = memory();
        let mut h = Harness::new(&mem, true);
        for i in 0..(RX_PENDING_FRAMES + 10) {
            h.peer_send(&frame(60, i as u8));
        }
        h.net.process_rx();
        assert_eq!(h.net.pending_rx.len(), RX_PENDING_FRAMES);
        // Full: the backend is not polled for input any more.
        assert_eq!(h.net.backend_interest(), Some(EventSet::empty()));
        assert_eq!(count(&h.net.metrics().rx_pending_full), 1);
        // Buffers arrive: everything flows, in order.
        for i in 0..16u64 {
            h.add_rx(&[(0x10000 + i * 0x1000, 2048, true)]);
        }
        h.net.process_rx();
        assert_eq!(h.used(&h.rxq).len(), 16);
        let mut first = [0u8; 60];
        mem.read_slice(&mut first, GuestAddress(0x10000 + HDR_LEN as u64))
            .unwrap();
        assert_eq!(first.to_vec(), frame(60, 0));
        assert_eq!(h.net.backend_interest(), Some(EventSet::IN));
    }

    #[test]
    fn test_tx_waits_while_backend_is_full() {
        let mem = memory();
        let mut h = Harness::new(&mem, false);
        let f = frame(60000, 1);
        for i in 0..12u64 {
            h.send(0x100000 + i * 0x10000, NetHeader::default(), &f);
        }
        h.net.process_tx();
        let used = h.used(&h.txq).len();
        assert!(used < 12, "backend never pushed back");
        assert!(h.net.tx_blocked);
        assert_eq!(h.net.backend_interest(), Some(EventSet::IN | EventSet::OUT));
        // The peer reads everything; writable events let the rest through.
        let reader = {
            let mut peer = h.peer.try_clone().unwrap();
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 12 * 60004];
                peer.read_exact(&mut buf).map(|_| buf)
            })
        };
        for _ in 0..10_000 {
            if h.used(&h.txq).len() == 12 && !h.net.backend.has_pending_output() {
                break;
            }
            h.net.handle_backend_event(EventSet::OUT);
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let buf = reader.join().unwrap().unwrap();
        assert_eq!(&buf[60004 * 11 + 4..], &f[..]);
        assert_eq!(count(&h.net.metrics().tx_frames), 12);
        assert!(count(&h.net.metrics().tx_backend_full) >= 1);
    }

    #[test]
    fn test_backend_gone_drops_frames() {
        let mem = memory();
        let mut h = Harness::new(&mem, false);
        let peer = std::mem::replace(&mut h.peer, UnixStream::pair().unwrap().0);
        drop(peer);
        h.net.handle_backend_event(EventSet::IN | EventSet::HANG_UP);
        assert_eq!(h.net.backend_interest(), None);
        assert_eq!(count(&h.net.metrics().backend_errors), 1);
        h.send(0x10000, NetHeader::default(), &frame(60, 1));
        h.net.process_tx();
        assert_eq!(h.used(&h.txq), vec![(0, 0)]);
        assert_eq!(count(&h.net.metrics().tx_dropped_backend), 1);
    }

    #[test]
    fn test_config_space_and_features() {
        let mem = memory();
        let h = Harness::new(&mem, false);
        let mut mac = [0u8; 6];
        h.net.read_config(0, &mut mac);
        assert_eq!(mac, [2, 0, 0, 0, 0, 1]);
        let mut status = [0u8; 2];
        h.net.read_config(6, &mut status);
        assert_eq!(u16::from_le_bytes(status), S_LINK_UP);
        assert_eq!(h.net.avail_features(), (1 << 32) | (1 << 5) | (1 << 15));
    }
}
