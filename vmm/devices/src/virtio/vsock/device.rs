//! The virtio-vsock device: queues on one side, the unix-socket muxer on the other.

use std::num::Wrapping;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use virtio_queue::{QueueOwnedT, QueueT};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::defs::HEADER_LEN;
use super::metrics::VsockMetrics;
use super::packet::parse_tx;
use super::unix::{FdOp, VsockMuxer};
use super::{VsockError, EVQ, QUEUE_SIZES, RXQ, TXQ};
use crate::virtio::chain::{self, scatter};
use crate::virtio::defs::{device_type, features::VIRTIO_F_VERSION_1};
use crate::virtio::{feature_bit, read_config_bytes, ActivateError, ActiveQueues, VirtioDevice};
use crate::warn_guest;

/// Settings of the vsock device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VsockConfig {
    /// The guest's CID.
    pub guest_cid: u64,
    /// Host unix socket (see the module documentation).
    pub uds_path: PathBuf,
}

/// The vsock device.
pub struct Vsock {
    guest_cid: u64,
    pub(super) muxer: VsockMuxer,
    queue_evts: Vec<EventFd>,
    active: Option<ActiveQueues>,
    /// Tx packets were left in the queue because too many answers wait for rx buffers
    /// ([`VsockMuxer::control_backlogged`]); receiving resumes transmitting.
    tx_stalled: bool,
    /// A transport reset waits for an event-queue buffer (after a restore).
    reset_pending: bool,
    metrics: Arc<VsockMetrics>,
}

impl Vsock {
    /// Creates the device and starts listening on the host socket.
    pub fn new(config: VsockConfig) -> Result<Self, VsockError> {
        let listener = super::unix::bind_listener(&config.uds_path)?;
        Self::with_listener(config, listener)
    }

    /// Creates the device serving `listener`, bound at `config.uds_path` beforehand (by
    /// [`bind_listener`](super::unix::bind_listener), e.g. before a jail hid the folder).
    pub fn with_listener(
        config: VsockConfig,
        listener: std::os::unix::net::UnixListener,
    ) -> Result<Self, VsockError> {
        let metrics = Arc::new(VsockMetrics::default());
        let muxer = VsockMuxer::with_listener(
            config.guest_cid,
            &config.uds_path,
            listener,
            metrics.clone(),
        );
        let queue_evts = (0..3)
            .map(|_| EventFd::new(EFD_NONBLOCK).map_err(VsockError::EventFd))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Vsock {
            guest_cid: config.guest_cid,
            muxer,
            queue_evts,
            active: None,
            tx_stalled: false,
            reset_pending: false,
            metrics,
        })
    }

    /// The guest's CID.
    pub fn guest_cid(&self) -> u64 {
        self.guest_cid
    }

    /// The device's counters.
    pub fn metrics(&self) -> Arc<VsockMetrics> {
        self.metrics.clone()
    }

    /// Epoll changes the muxer asked for.
    pub(super) fn take_fd_ops(&mut self) -> Vec<FdOp> {
        self.muxer.take_ops()
    }

    fn avail_ok(active: &mut ActiveQueues, idx: usize, metrics: &VsockMetrics) -> bool {
        let mem = &active.mem;
        let queue = &active.queues[idx];
        match queue.avail_idx(mem, Ordering::Acquire) {
            Ok(avail) if (avail - Wrapping(queue.next_avail())).0 <= queue.size() => true,
            _ => {
                warn_guest!(
                    queue = idx,
                    "vsock: invalid avail index; device needs reset"
                );
                VsockMetrics::add(&metrics.needs_reset, 1);
                active.interrupt.set_needs_reset();
                false
            }
        }
    }

    /// Forwards every packet the guest queued, or as many as the muxer can answer before the
    /// guest receives.
    pub fn process_tx(&mut self) {
        self.tx_stalled = false;
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let mem = active.mem.clone();
        let mut used = false;
        while Self::avail_ok(active, TXQ, &self.metrics) {
            if self.muxer.control_backlogged() {
                // The packets stay in the queue; `process_rx` comes back for them.
                self.tx_stalled = true;
                break;
            }
            let queue = &mut active.queues[TXQ];
            let Some(desc_chain) = queue.pop_descriptor_chain(&mem) else {
                break;
            };
            let head = desc_chain.head_index();
            let parsed = chain::collect(desc_chain, &mem, usize::from(QUEUE_SIZES[TXQ]))
                .map_err(|e| e.to_string())
                .and_then(|b| parse_tx(&mem, &b).map_err(|e| e.to_string()));
            match parsed {
                Ok((header, payload)) => self.muxer.send_to_host(&header, &payload),
                Err(e) => {
                    VsockMetrics::add(&self.metrics.malformed_packets, 1);
                    warn_guest!(error = %e, "vsock: malformed tx packet");
                }
            }
            if queue.add_used(&mem, head, 0).is_err() {
                active.interrupt.set_needs_reset();
                break;
            }
            used = true;
        }
        if used {
            active.interrupt.signal_used_queue();
        }
    }

    /// Fills guest rx buffers with whatever the muxer has, and takes the tx packets that
    /// waited for room meanwhile.
    pub fn process_rx(&mut self) {
        loop {
            self.fill_rx();
            if !self.tx_stalled || self.muxer.control_backlogged() {
                return;
            }
            // Each round uses rx buffers or tx packets, which the guest posted in finite number.
            self.process_tx();
        }
    }

    /// Fills guest rx buffers with whatever the muxer has.
    fn fill_rx(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let mem = active.mem.clone();
        let mut used = false;
        while self.muxer.has_rx() && Self::avail_ok(active, RXQ, &self.metrics) {
            let queue = &mut active.queues[RXQ];
            let Some(desc_chain) = queue.pop_descriptor_chain(&mem) else {
                break;
            };
            let head = desc_chain.head_index();
            let buffers = match chain::collect(desc_chain, &mem, usize::from(QUEUE_SIZES[RXQ])) {
                Ok(b) if b.readable.is_empty() && b.writable_len() >= HEADER_LEN as u64 => b,
                Ok(_) | Err(_) => {
                    VsockMetrics::add(&self.metrics.malformed_packets, 1);
                    warn_guest!("vsock: unusable rx buffer");
                    if queue.add_used(&mem, head, 0).is_err() {
                        active.interrupt.set_needs_reset();
                        break;
                    }
                    used = true;
                    continue;
                }
            };
            let room = (buffers.writable_len() - HEADER_LEN as u64) as usize;
            let Some((header, payload)) = self.muxer.next_rx_packet(room) else {
                if room == 0 && self.muxer.has_rx() {
                    // Data waits and this buffer holds a header only: give it back empty, or
                    // the data would wait for it forever.
                    VsockMetrics::add(&self.metrics.malformed_packets, 1);
                    warn_guest!("vsock: rx buffer without room for data");
                    if queue.add_used(&mem, head, 0).is_err() {
                        active.interrupt.set_needs_reset();
                        break;
                    }
                    used = true;
                    continue;
                }
                queue.go_to_previous_position();
                break;
            };
            let written = scatter(&mem, &buffers.writable, 0, &header.to_bytes())
                .and_then(|_| scatter(&mem, &buffers.writable, HEADER_LEN as u64, &payload));
            let len = if written.is_ok() {
                (HEADER_LEN + payload.len()) as u32
            } else {
                0
            };
            VsockMetrics::add(&self.metrics.rx_packets, 1);
            if queue.add_used(&mem, head, len).is_err() {
                active.interrupt.set_needs_reset();
                break;
            }
            used = true;
        }
        if used {
            active.interrupt.signal_used_queue();
        }
    }

    /// Asks for VIRTIO_VSOCK_EVENT_TRANSPORT_RESET to be sent: the driver then drops every
    /// connection (they fail with ECONNRESET) and keeps its listening sockets.
    pub(super) fn request_transport_reset(&mut self) {
        self.reset_pending = true;
        self.send_pending_reset();
    }

    /// Sends a pending transport reset in the next event-queue buffer, if the driver posted
    /// one.
    pub(super) fn send_pending_reset(&mut self) {
        if !self.reset_pending {
            return;
        }
        let Some(active) = self.active.as_mut() else {
            return;
        };
        if !Self::avail_ok(active, EVQ, &self.metrics) {
            self.reset_pending = false;
            return;
        }
        let mem = active.mem.clone();
        let queue = &mut active.queues[EVQ];
        let Some(desc_chain) = queue.pop_descriptor_chain(&mem) else {
            return;
        };
        let head = desc_chain.head_index();
        let event = super::defs::EVENT_TRANSPORT_RESET.to_le_bytes();
        let len = match chain::collect(desc_chain, &mem, usize::from(QUEUE_SIZES[EVQ])) {
            Ok(b) if b.writable_len() >= super::defs::EVENT_LEN => {
                match scatter(&mem, &b.writable, 0, &event) {
                    Ok(()) => super::defs::EVENT_LEN as u32,
                    Err(_) => 0,
                }
            }
            _ => {
                VsockMetrics::add(&self.metrics.malformed_packets, 1);
                warn_guest!("vsock: unusable event buffer");
                0
            }
        };
        if queue.add_used(&mem, head, len).is_err() {
            active.interrupt.set_needs_reset();
            return;
        }
        active.interrupt.signal_used_queue();
        if len > 0 {
            self.reset_pending = false;
            tracing::info!("vsock: transport reset sent to the guest");
        }
    }

    pub(super) fn drain_queue_event(&self, idx: usize) {
        let _ = self.queue_evts[idx].read();
    }

    pub(super) fn is_event_queue(idx: usize) -> bool {
        idx == EVQ
    }
}

impl VirtioDevice for Vsock {
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
        device_type::VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn avail_features(&self) -> u64 {
        feature_bit(VIRTIO_F_VERSION_1)
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.guest_cid.to_le_bytes(), offset, data);
    }

    fn activate(&mut self, active: ActiveQueues) -> Result<(), ActivateError> {
        if active.queues.len() != QUEUE_SIZES.len() {
            return Err(ActivateError::QueueCount {
                expected: QUEUE_SIZES.len(),
                got: active.queues.len(),
            });
        }
        self.active = Some(active);
        self.process_tx();
        self.process_rx();
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
        self.tx_stalled = false;
        self.reset_pending = false;
        self.muxer.reset();
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
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::Queue;
    use vm_memory::{Address, Bytes, GuestAddress};

    use super::*;
    use crate::interrupt::NoInterrupt;
    use crate::virtio::chain::test_utils::{chain_descs, memory};
    use crate::virtio::vsock::defs::{OP_RST, OP_RW, TYPE_STREAM};
    use crate::virtio::vsock::packet::PacketHeader;
    use crate::virtio::vsock::unix::MAX_PENDING_CONTROL;
    use crate::virtio::VirtioInterrupt;
    use crate::GuestMemory;

    /// A 256-entry mock queue at `base` with its used ring moved clear of the avail ring (the
    /// mock places it by element count, not bytes).
    fn queue(q: &MockSplitQueue<'_, GuestMemory>) -> Queue {
        let mut queue: Queue = q.create_queue().unwrap();
        queue
            .try_set_used_ring_address(q.desc_table_addr().unchecked_add(0x2000))
            .unwrap();
        queue
    }

    fn used_idx(mem: &GuestMemory, q: &MockSplitQueue<'_, GuestMemory>) -> u16 {
        mem.read_obj(q.desc_table_addr().unchecked_add(0x2002))
            .unwrap()
    }

    #[test]
    fn test_tx_waits_while_answers_wait_for_rx_buffers() {
        // Found in review: each tx packet for an unknown connection queued an RST for the
        // guest; a guest that sends without posting rx buffers grew that queue without bound.
        let dir = tempfile::tempdir().unwrap();
        let mut vsock = Vsock::new(VsockConfig {
            guest_cid: 3,
            uds_path: dir.path().join("v.sock"),
        })
        .unwrap();
        let mem = memory();
        let rxq = MockSplitQueue::create(&mem, GuestAddress(0x100000), 256);
        let txq = MockSplitQueue::create(&mem, GuestAddress(0x200000), 256);
        let evq = MockSplitQueue::create(&mem, GuestAddress(0x300000), 256);
        let packet = PacketHeader {
            src_cid: 3,
            dst_cid: 2,
            src_port: 1000,
            dst_port: 7,
            type_: TYPE_STREAM,
            op: OP_RW,
            ..Default::default()
        };
        mem.write_slice(&packet.to_bytes(), GuestAddress(0x10000))
            .unwrap();
        let sent = 200u16;
        for i in 0..sent {
            txq.add_desc_chains(&chain_descs(&[(0x10000, 44, false)], i), i)
                .unwrap();
        }
        vsock
            .activate(ActiveQueues {
                mem: mem.clone(),
                queues: vec![queue(&rxq), queue(&txq), queue(&evq)],
                interrupt: Arc::new(VirtioInterrupt::new(Arc::new(NoInterrupt))),
                acked_features: feature_bit(VIRTIO_F_VERSION_1),
            })
            .unwrap();
        // No rx buffers: the device stops once MAX_PENDING_CONTROL answers wait.
        assert_eq!(usize::from(used_idx(&mem, &txq)), MAX_PENDING_CONTROL);
        assert_eq!(
            vsock.metrics.tx_packets.load(Ordering::Relaxed),
            MAX_PENDING_CONTROL as u64
        );
        // Rx buffers arrive: the answers go out and the rest of the tx packets are taken.
        for i in 0..sent {
            let addr = 0x20000 + u64::from(i) * 0x100;
            rxq.add_desc_chains(&chain_descs(&[(addr, 64, true)], i), i)
                .unwrap();
        }
        vsock.process_rx();
        assert_eq!(used_idx(&mem, &txq), sent);
        assert_eq!(used_idx(&mem, &rxq), sent);
        assert!(!vsock.muxer.has_rx());
        let mut raw = [0u8; HEADER_LEN];
        mem.read_slice(&mut raw, GuestAddress(0x20000 + 199 * 0x100))
            .unwrap();
        assert_eq!(PacketHeader::from_bytes(&raw).op, OP_RST);
    }
}
