//! Windows: the Windows Hypervisor Platform, which QEMU uses as `whpx` (an optional
//! Windows feature: QEMU says so when it is off).

use super::{Accel, AccelChoice};

pub(super) fn choose() -> AccelChoice {
    AccelChoice {
        accel: Accel::Whpx,
        reason: "Windows: Hypervisor Platform (enable the Windows feature \"Windows Hypervisor Platform\" if QEMU cannot use it)".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_windows_uses_whpx() {
        assert_eq!(choose().accel, Accel::Whpx);
    }
}
