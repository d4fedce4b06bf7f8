//! The event-manager subscriber of virtio-rng.

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;

use super::device::Rng;
use crate::virtio::VirtioDevice;

const QUEUE_EVENT: u32 = 0;

impl MutEventSubscriber for Rng {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if events.data() == QUEUE_EVENT {
            self.handle_queue_event();
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::with_data(
            &self.queue_events()[0],
            QUEUE_EVENT,
            EventSet::IN,
        )) {
            tracing::error!(error = ?e, "cannot register the rng queue event");
        }
    }
}
