//! The virtio-rng device.

use std::fs::File;
use std::num::Wrapping;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use virtio_queue::QueueT;
use vm_memory::Bytes;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{RngError, MAX_REQUEST_BYTES, QUEUE_SIZE};
use crate::virtio::chain;
use crate::virtio::defs::{device_type, features::VIRTIO_F_VERSION_1};
use crate::virtio::{feature_bit, ActivateError, ActiveQueues, VirtioDevice};
use crate::warn_guest;

/// Counters of the rng device.
#[derive(Debug, Default, serde::Serialize)]
pub struct RngMetrics {
    /// Requests served.
    pub requests: AtomicU64,
    /// Bytes given to the guest.
    pub bytes: AtomicU64,
    /// Malformed descriptor chains.
    pub malformed_chains: AtomicU64,
    /// Host entropy read failures.
    pub host_errors: AtomicU64,
    /// Times the device was marked DEVICE_NEEDS_RESET.
    pub needs_reset: AtomicU64,
}

/// A virtio-rng device.
pub struct Rng {
    source: File,
    queue_evts: Vec<EventFd>,
    active: Option<ActiveQueues>,
    metrics: Arc<RngMetrics>,
}

impl Rng {
    /// A device reading `/dev/urandom`.
    pub fn new() -> Result<Self, RngError> {
        Ok(Rng {
            source: File::open("/dev/urandom").map_err(RngError::Open)?,
            queue_evts: vec![EventFd::new(EFD_NONBLOCK).map_err(RngError::EventFd)?],
            active: None,
            metrics: Arc::new(RngMetrics::default()),
        })
    }

    /// The device's counters.
    pub fn metrics(&self) -> Arc<RngMetrics> {
        self.metrics.clone()
    }

    pub(super) fn handle_queue_event(&mut self) {
        let _ = self.queue_evts[0].read();
        self.process_queue();
    }

    /// Fills every available buffer.
    pub fn process_queue(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let mem = active.mem.clone();
        let queue = &mut active.queues[0];
        let mut completed = false;
        loop {
            match queue.avail_idx(&mem, Ordering::Acquire) {
                Ok(idx) if (idx - Wrapping(queue.next_avail())).0 <= queue.size() => {}
                _ => {
                    warn_guest!("virtio-rng: invalid avail index; device needs reset");
                    self.metrics.needs_reset.fetch_add(1, Ordering::Relaxed);
                    active.interrupt.set_needs_reset();
                    break;
                }
            }
            let Some(desc_chain) = queue.pop_descriptor_chain(&mem) else {
                break;
            };
            let head = desc_chain.head_index();
            let mut written = 0u32;
            match chain::collect(desc_chain, &mem, usize::from(QUEUE_SIZE)) {
                Ok(buffers) if buffers.readable.is_empty() => {
                    for seg in &buffers.writable {
                        let room = MAX_REQUEST_BYTES - written;
                        if room == 0 {
                            break;
                        }
                        let len = seg.len.min(room) as usize;
                        match mem.read_exact_volatile_from(seg.addr, &mut self.source, len) {
                            Ok(()) => written += len as u32,
                            Err(e) => {
                                self.metrics.host_errors.fetch_add(1, Ordering::Relaxed);
                                tracing::error!(error = %e, "virtio-rng: cannot read host entropy");
                                break;
                            }
                        }
                    }
                    self.metrics.requests.fetch_add(1, Ordering::Relaxed);
                    self.metrics
                        .bytes
                        .fetch_add(u64::from(written), Ordering::Relaxed);
                }
                Ok(_) => {
                    self.metrics
                        .malformed_chains
                        .fetch_add(1, Ordering::Relaxed);
                    warn_guest!("virtio-rng: device-readable buffer in a request");
                }
                Err(e) => {
                    self.metrics
                        .malformed_chains
                        .fetch_add(1, Ordering::Relaxed);
                    warn_guest!(error = %e, "virtio-rng: malformed chain");
                }
            }
            if queue.add_used(&mem, head, written).is_err() {
                self.metrics.needs_reset.fetch_add(1, Ordering::Relaxed);
                active.interrupt.set_needs_reset();
                break;
            }
            completed = true;
        }
        if completed && queue.needs_notification(&mem).unwrap_or(true) {
            active.interrupt.signal_used_queue();
        }
    }
}

impl VirtioDevice for Rng {
    fn queue_progress(&self) -> Option<Vec<(u16, u16)>> {
        self.active
            .as_ref()
            .map(|a| crate::virtio::persist::progress_of(&a.queues))
    }

    fn device_type(&self) -> u32 {
        device_type::RNG
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn avail_features(&self) -> u64 {
        feature_bit(VIRTIO_F_VERSION_1)
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn activate(&mut self, active: ActiveQueues) -> Result<(), ActivateError> {
        if active.queues.len() != 1 {
            return Err(ActivateError::QueueCount {
                expected: 1,
                got: active.queues.len(),
            });
        }
        self.active = Some(active);
        self.process_queue();
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
    use super::*;
    use crate::interrupt::NoInterrupt;
    use crate::virtio::chain::test_utils::{memory, queue_with_chain};
    use crate::virtio::VirtioInterrupt;
    use vm_memory::GuestAddress;

    #[test]
    fn test_rng_fills_buffers_and_refuses_readable() {
        let mem = memory();
        let mut rng = Rng::new().unwrap();
        let q = queue_with_chain(&mem, 16, &[(0x10000, 64, true), (0x20000, 64, true)]);
        rng.activate(ActiveQueues {
            mem: mem.clone(),
            queues: vec![q.create_queue().unwrap()],
            interrupt: Arc::new(VirtioInterrupt::new(Arc::new(NoInterrupt))),
            acked_features: 0,
        })
        .unwrap();
        assert_eq!(q.used().ring().ref_at(0).unwrap().load().len(), 128);
        let mut buf = [0u8; 64];
        mem.read_slice(&mut buf, GuestAddress(0x20000)).unwrap();
        assert!(buf.iter().any(|&b| b != 0));

        let q = queue_with_chain(&mem, 16, &[(0x10000, 64, false)]);
        rng.reset();
        rng.activate(ActiveQueues {
            mem: mem.clone(),
            queues: vec![q.create_queue().unwrap()],
            interrupt: Arc::new(VirtioInterrupt::new(Arc::new(NoInterrupt))),
            acked_features: 0,
        })
        .unwrap();
        assert_eq!(q.used().ring().ref_at(0).unwrap().load().len(), 0);
        assert_eq!(rng.metrics.malformed_chains.load(Ordering::Relaxed), 1);
    }
}
