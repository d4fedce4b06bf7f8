//! The event-manager subscriber of virtio-blk: queue notifications only.

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;

use super::device::Block;
use crate::virtio::VirtioDevice;

/// Token of the queue eventfd.
const QUEUE_EVENT: u32 = 0;

impl MutEventSubscriber for Block {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        match events.data() {
            QUEUE_EVENT => self.handle_queue_event(),
            other => tracing::warn!(token = other, "unexpected block event"),
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        let evt = &self.queue_events()[0];
        if let Err(e) = ops.add(Events::with_data(evt, QUEUE_EVENT, EventSet::IN)) {
            tracing::error!(error = ?e, "cannot register the block queue event");
        }
    }
}
