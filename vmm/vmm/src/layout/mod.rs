//! The guest physical memory map of each arch. [`x86_64`] is the Firecracker/microvm layout,
//! [`aarch64`] QEMU `virt`'s low devices with RAM from 2 GiB. The host's arch is re-exported
//! here; both are compiled everywhere (plain constants) so their unit tests run on any host.

pub mod aarch64;
pub mod x86_64;

#[cfg(target_arch = "aarch64")]
pub use self::aarch64::*;
#[cfg(target_arch = "x86_64")]
pub use self::x86_64::*;
