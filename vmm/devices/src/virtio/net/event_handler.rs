//! The event-manager subscriber of virtio-net: queue notifications and the backend's
//! descriptor, mapped to device methods; the backend's epoll interest follows the device's
//! state after every event.

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;

use super::device::Net;
use super::{RXQ, TXQ};
use crate::virtio::VirtioDevice;

/// Token of the backend's descriptor (queue events use their index).
const BACKEND_TOKEN: u32 = 16;

impl Net {
    fn sync_backend_interest(&mut self, ops: &mut EventOps) {
        let wanted = self.backend_interest();
        if wanted == self.backend_registered {
            return;
        }
        let fd = self.backend_fd();
        let result = match (self.backend_registered, wanted) {
            (None, Some(set)) => ops.add(Events::with_data_raw(fd, BACKEND_TOKEN, set)),
            (Some(_), Some(set)) => ops.modify(Events::with_data_raw(fd, BACKEND_TOKEN, set)),
            (Some(_), None) => {
                ops.remove(Events::with_data_raw(fd, BACKEND_TOKEN, EventSet::empty()))
            }
            (None, None) => Ok(()),
        };
        match result {
            Ok(()) => self.backend_registered = wanted,
            Err(e) => tracing::warn!(error = ?e, "virtio-net: epoll update of the backend failed"),
        }
    }
}

impl MutEventSubscriber for Net {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            t if t as usize == RXQ => {
                self.drain_queue_event(RXQ);
                self.process_rx();
            }
            t if t as usize == TXQ => {
                self.drain_queue_event(TXQ);
                self.process_tx();
            }
            BACKEND_TOKEN => self.handle_backend_event(events.event_set()),
            _ => {}
        }
        self.sync_backend_interest(ops);
    }

    fn init(&mut self, ops: &mut EventOps) {
        for (i, evt) in self.queue_events().iter().enumerate() {
            if let Err(e) = ops.add(Events::with_data(evt, i as u32, EventSet::IN)) {
                tracing::error!(error = ?e, "virtio-net: cannot register a queue event");
            }
        }
        self.sync_backend_interest(ops);
    }
}
