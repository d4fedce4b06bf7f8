//! Guest memory: anonymous mappings for the RAM ranges of the layout, registered with the VM.

use hypervisor::{MemoryFlags, Vm};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use crate::layout::ram_ranges;
use devices::GuestMemory;

/// Errors of guest memory setup.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// Mapping host memory failed.
    #[error("cannot allocate {0} MiB of guest memory")]
    Allocate(u64, #[source] vm_memory::mmap::FromRangesError),
    /// Registering a region with the VM failed.
    #[error("cannot register guest memory with the hypervisor")]
    Register(#[source] hypervisor::HypervisorError),
}

/// Allocates `size` bytes of guest RAM (lazily: pages are only backed once touched).
pub fn create(size: u64) -> Result<GuestMemory, MemoryError> {
    let ranges: Vec<(GuestAddress, usize)> = ram_ranges(size)
        .into_iter()
        .map(|(start, len)| (GuestAddress(start), len as usize))
        .collect();
    GuestMemory::from_ranges(&ranges).map_err(|e| MemoryError::Allocate(size >> 20, e))
}

/// Registers every region of `mem` with `vm`, one slot each.
///
/// The caller keeps `mem` (or a clone, which shares the mappings) alive as long as `vm`.
pub fn register(vm: &dyn Vm, mem: &GuestMemory) -> Result<(), MemoryError> {
    for (slot, region) in mem.iter().enumerate() {
        let host_ptr = region.as_ptr();
        // SAFETY: `host_ptr` is the start of an mmap of `region.len()` bytes owned by an `Arc`
        // in `mem`; every clone of the guest memory shares that `Arc`, and the VMM keeps one for
        // the life of the VM (it exits the process rather than dropping it under a running VM).
        // The mapping is only ever accessed through volatile guest-memory accessors.
        unsafe {
            vm.map_memory(
                slot as u32,
                region.start_addr().0,
                host_ptr,
                region.len(),
                MemoryFlags::default(),
            )
        }
        .map_err(MemoryError::Register)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_create_splits_at_mmio_gap() {
        let mem = create(64 << 20).unwrap();
        assert_eq!(mem.num_regions(), 1);
        assert_eq!(mem.last_addr().0, (64 << 20) - 1);
    }
}
