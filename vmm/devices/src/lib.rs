//! Emulated devices of `rmachine-vmm`.
//!
//! Everything here is reachable by an untrusted guest: every descriptor chain, address, length
//! and register access is validated; bad input is counted in the device's metrics, logged at a
//! limited rate and answered as the specification says. Nothing the guest does panics or stops
//! the VMM.

#![forbid(unsafe_code)]

pub mod bus;
pub mod interrupt;
pub mod legacy;
pub mod log_limiter;
pub mod metrics;
pub mod transport;
pub mod virtio;

/// The guest memory type every device works on.
pub type GuestMemory = vm_memory::GuestMemoryMmap;
