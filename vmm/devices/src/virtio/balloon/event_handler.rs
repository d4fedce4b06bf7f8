//! The event-manager subscriber of virtio-balloon: one event per queue.

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;

use super::device::Balloon;
use crate::virtio::VirtioDevice;

impl MutEventSubscriber for Balloon {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        self.handle_queue_event(events.data() as usize);
    }

    fn init(&mut self, ops: &mut EventOps) {
        for (i, evt) in self.queue_events().iter().enumerate() {
            if let Err(e) = ops.add(Events::with_data(evt, i as u32, EventSet::IN)) {
                tracing::error!(error = ?e, "virtio-balloon: cannot register a queue event");
            }
        }
    }
}
