//! The event-manager subscriber of virtio-vsock: queue notifications, the listening socket and
//! host streams, mapped to device and muxer methods.

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;

use super::device::Vsock;
use super::unix::{FdOp, LISTENER_TOKEN, TOKEN_BASE};
use super::{RXQ, TXQ};
use crate::virtio::VirtioDevice;

impl Vsock {
    fn apply_fd_ops(&mut self, ops: &mut EventOps) {
        for op in self.take_fd_ops() {
            let result = match op {
                FdOp::Add(fd, tok, set) => ops.add(Events::with_data_raw(fd, tok, set)),
                FdOp::Modify(fd, tok, set) => ops.modify(Events::with_data_raw(fd, tok, set)),
                FdOp::Remove(fd, tok) => {
                    ops.remove(Events::with_data_raw(fd, tok, EventSet::empty()))
                }
            };
            if let Err(e) = result {
                tracing::warn!(?op, error = ?e, "vsock: epoll update failed");
            }
        }
        self.muxer.bury();
    }
}

impl MutEventSubscriber for Vsock {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let tok = events.data();
        match tok {
            0..=2 => {
                let idx = tok as usize;
                self.drain_queue_event(idx);
                if idx == TXQ {
                    self.process_tx();
                } else if Self::is_event_queue(idx) {
                    // Event-queue buffers: kept for transport resets.
                    self.send_pending_reset();
                } else if idx == RXQ {
                    // New rx buffers: filled below.
                }
            }
            LISTENER_TOKEN => self.muxer.accept(),
            t if t >= TOKEN_BASE => self.muxer.handle_host_event(t, events.event_set()),
            _ => {}
        }
        self.apply_fd_ops(ops);
        self.process_rx();
        self.apply_fd_ops(ops);
    }

    fn init(&mut self, ops: &mut EventOps) {
        for (i, evt) in self.queue_events().iter().enumerate() {
            if let Err(e) = ops.add(Events::with_data(evt, i as u32, EventSet::IN)) {
                tracing::error!(error = ?e, "vsock: cannot register a queue event");
            }
        }
        let listener = self.muxer.listener_fd();
        if let Err(e) = ops.add(Events::with_data_raw(
            listener,
            LISTENER_TOKEN,
            EventSet::IN,
        )) {
            tracing::error!(error = ?e, "vsock: cannot register the listener");
        }
    }
}
