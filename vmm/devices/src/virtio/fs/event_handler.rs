//! The event-manager subscriber of virtio-fs: the backend's call eventfds become interrupts.
//! (Queue notifications go to the backend directly and are not watched here.)

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;

use super::device::Fs;

impl MutEventSubscriber for Fs {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        self.handle_call(events.data() as usize);
    }

    fn init(&mut self, ops: &mut EventOps) {
        for (i, evt) in self.call_evts.iter().enumerate() {
            if let Err(e) = ops.add(Events::with_data(evt, i as u32, EventSet::IN)) {
                tracing::error!(error = ?e, queue = i, "cannot register a virtio-fs call event");
            }
        }
    }
}
