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
    metrics: Arc<VsockMetrics>,
}

impl Vsock {
    /// Creates the device and starts listening on the host socket.
    pub fn new(config: VsockConfig) -> Result<Self, VsockError> {
        let metrics = Arc::new(VsockMetrics::default());
        let muxer = VsockMuxer::new(config.guest_cid, &config.uds_path, metrics.clone())?;
        let queue_evts = (0..3)
            .map(|_| EventFd::new(EFD_NONBLOCK).map_err(VsockError::EventFd))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Vsock {
            guest_cid: config.guest_cid,
            muxer,
            queue_evts,
            active: None,
            metrics,
        })
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

    /// Forwards every packet the guest queued.
    pub fn process_tx(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let mem = active.mem.clone();
        let mut used = false;
        while Self::avail_ok(active, TXQ, &self.metrics) {
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

    /// Fills guest rx buffers with whatever the muxer has.
    pub fn process_rx(&mut self) {
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

    pub(super) fn drain_queue_event(&self, idx: usize) {
        let _ = self.queue_evts[idx].read();
    }

    pub(super) fn is_event_queue(idx: usize) -> bool {
        idx == EVQ
    }
}

impl VirtioDevice for Vsock {
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
        self.muxer.reset();
    }

    fn is_activated(&self) -> bool {
        self.active.is_some()
    }

    fn queue_events(&self) -> &[EventFd] {
        &self.queue_evts
    }
}
