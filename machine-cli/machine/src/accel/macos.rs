//! macOS: Hypervisor.framework (compiled, untested).

use super::{Accel, AccelChoice};

pub(super) fn choose() -> AccelChoice {
    AccelChoice {
        accel: Accel::Hvf,
        reason: "macOS: Hypervisor.framework".into(),
    }
}
