//! Guest memory: anonymous mappings for the RAM ranges of the layout, registered with the VM.

use std::sync::Arc;

use hypervisor::{x86_64, IrqFd, MemoryFlags, Result as HvResult, Vcpu, VcpuKicker, Vm, VmExit};
use vm_memory::{FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use crate::layout::ram_ranges;
use devices::virtio::balloon::DiscardMemory;
use devices::GuestMemory;

/// Errors of guest memory setup.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// Mapping host memory failed.
    #[error("cannot allocate {0} MiB of guest memory")]
    Allocate(u64, #[source] vm_memory::mmap::FromRangesError),
    /// The memfd backing shared guest memory could not be created.
    #[error("cannot create shared guest memory (memfd)")]
    Memfd(#[source] std::io::Error),
    /// Registering a region with the VM failed.
    #[error("cannot register guest memory with the hypervisor")]
    Register(#[source] hypervisor::HypervisorError),
}

/// Allocates `size` bytes of guest RAM (lazily: pages are only backed once touched).
///
/// Private anonymous memory, or with `shared` one memfd mapped shared, whose regions other
/// processes (vhost-user backends) can map too.
pub fn create(size: u64, shared: bool) -> Result<GuestMemory, MemoryError> {
    let ranges: Vec<(GuestAddress, usize)> = ram_ranges(size)
        .into_iter()
        .map(|(start, len)| (GuestAddress(start), len as usize))
        .collect();
    if !shared {
        return GuestMemory::from_ranges(&ranges).map_err(|e| MemoryError::Allocate(size >> 20, e));
    }
    let memfd = nix::sys::memfd::memfd_create(
        c"rmachine-guest-ram",
        nix::sys::memfd::MemFdCreateFlag::MFD_CLOEXEC,
    )
    .map_err(|e| MemoryError::Memfd(std::io::Error::from(e)))?;
    let file = std::fs::File::from(memfd);
    file.set_len(size).map_err(MemoryError::Memfd)?;
    let mut offset = 0u64;
    let mut with_files = Vec::with_capacity(ranges.len());
    for (start, len) in ranges {
        let clone = file.try_clone().map_err(MemoryError::Memfd)?;
        with_files.push((start, len, Some(FileOffset::new(clone, offset))));
        offset += len as u64;
    }
    GuestMemory::from_ranges_with_files(with_files)
        .map_err(|e| MemoryError::Allocate(size >> 20, e))
}

/// Registers every region of `mem` with `vm`, one slot each, and returns the VM bound to the
/// memory: the result owns a clone of `mem` (which shares the mappings), as does every vCPU it
/// creates, so the mappings stay valid as long as the VM or any of its vCPUs exists, whatever
/// the caller does with its own handles. This is what makes the registration safe.
pub fn register(vm: Box<dyn Vm>, mem: &GuestMemory) -> Result<Arc<dyn Vm>, MemoryError> {
    for (slot, region) in mem.iter().enumerate() {
        let host_ptr = region.as_ptr();
        // SAFETY: `host_ptr` is the start of an mmap of `region.len()` bytes owned by an `Arc`
        // in `mem`. `vm` is moved into the `MappedVm` returned below, which holds a clone of
        // `mem` (the same `Arc`s) and drops it only after the VM; every vCPU it creates holds
        // one too (`MappedVcpu`), so the mapping outlives the VM and its vCPUs (in KVM a vCPU
        // keeps its VM alive). If a later slot fails, `vm` is dropped at the return, before
        // `mem` can be. The mapping is only ever accessed through volatile guest-memory
        // accessors, never as Rust references.
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
    Ok(Arc::new(MappedVm {
        vm,
        _mem: mem.clone(),
    }))
}

/// A VM with its guest memory: fields drop in order, the VM before the memory.
struct MappedVm {
    vm: Box<dyn Vm>,
    _mem: GuestMemory,
}

impl Vm for MappedVm {
    unsafe fn map_memory(
        &self,
        slot: u32,
        guest_addr: u64,
        host_ptr: *mut u8,
        len: u64,
        flags: MemoryFlags,
    ) -> HvResult<()> {
        // SAFETY: the caller upholds this function's contract, which is the inner one's.
        unsafe { self.vm.map_memory(slot, guest_addr, host_ptr, len, flags) }
    }

    fn create_vcpu(&self, id: u8) -> HvResult<Box<dyn Vcpu>> {
        Ok(Box::new(MappedVcpu {
            vcpu: self.vm.create_vcpu(id)?,
            _mem: self._mem.clone(),
        }))
    }

    fn inject_irq(&self, line: u32) -> HvResult<()> {
        self.vm.inject_irq(line)
    }

    fn signal_msi(&self, addr: u64, data: u32) -> HvResult<()> {
        self.vm.signal_msi(addr, data)
    }

    fn irqfd(&self) -> Option<&dyn IrqFd> {
        self.vm.irqfd()
    }

    fn vcpus_created(&self) -> HvResult<()> {
        self.vm.vcpus_created()
    }

    fn save_state(&self) -> HvResult<x86_64::VmState> {
        self.vm.save_state()
    }

    fn restore_state(&self, state: &x86_64::VmState) -> HvResult<x86_64::ClockRestore> {
        self.vm.restore_state(state)
    }
}

/// A vCPU with the guest memory its VM maps: fields drop in order, the vCPU first.
struct MappedVcpu {
    vcpu: Box<dyn Vcpu>,
    _mem: GuestMemory,
}

impl Vcpu for MappedVcpu {
    fn run(&mut self) -> HvResult<VmExit<'_>> {
        self.vcpu.run()
    }
    fn kicker(&self) -> Box<dyn VcpuKicker> {
        self.vcpu.kicker()
    }
    #[cfg(target_arch = "x86_64")]
    fn regs(&self) -> HvResult<x86_64::StandardRegisters> {
        self.vcpu.regs()
    }
    #[cfg(target_arch = "x86_64")]
    fn set_regs(&self, regs: &x86_64::StandardRegisters) -> HvResult<()> {
        self.vcpu.set_regs(regs)
    }
    #[cfg(target_arch = "x86_64")]
    fn sregs(&self) -> HvResult<x86_64::SpecialRegisters> {
        self.vcpu.sregs()
    }
    #[cfg(target_arch = "x86_64")]
    fn set_sregs(&self, sregs: &x86_64::SpecialRegisters) -> HvResult<()> {
        self.vcpu.set_sregs(sregs)
    }
    #[cfg(target_arch = "x86_64")]
    fn set_fpu(&self, fpu: &x86_64::FpuState) -> HvResult<()> {
        self.vcpu.set_fpu(fpu)
    }
    #[cfg(target_arch = "x86_64")]
    fn set_msrs(&self, msrs: &[x86_64::MsrEntry]) -> HvResult<()> {
        self.vcpu.set_msrs(msrs)
    }
    #[cfg(target_arch = "x86_64")]
    fn set_cpuid(&self, entries: &[x86_64::CpuidEntry]) -> HvResult<()> {
        self.vcpu.set_cpuid(entries)
    }
    #[cfg(target_arch = "x86_64")]
    fn setup_lapic(&self) -> HvResult<()> {
        self.vcpu.setup_lapic()
    }
    #[cfg(target_arch = "aarch64")]
    fn init(&self, init: &hypervisor::aarch64::VcpuInit) -> HvResult<()> {
        self.vcpu.init(init)
    }

    #[cfg(target_arch = "aarch64")]
    fn set_core_reg(&self, reg: hypervisor::aarch64::CoreReg, value: u64) -> HvResult<()> {
        self.vcpu.set_core_reg(reg, value)
    }

    fn save_state(&self) -> HvResult<x86_64::VcpuState> {
        self.vcpu.save_state()
    }
    fn restore_state(&self, state: &x86_64::VcpuState) -> HvResult<()> {
        self.vcpu.restore_state(state)
    }
}

/// Gives guest pages back to the host with `madvise` on the VMM's mapping, for the balloon
/// device: `MADV_DONTNEED` for private anonymous memory, `MADV_REMOVE` for shared (memfd)
/// memory, where DONTNEED would only drop this process's page table entries. Either way a
/// discarded page reads as zero at the guest's next access, which faults in a fresh page.
pub struct MadviseDiscard {
    mem: GuestMemory,
    page_size: usize,
    advice: libc::c_int,
}

impl MadviseDiscard {
    /// Discards pages of `mem` (a clone sharing the mappings).
    pub fn new(mem: GuestMemory) -> Self {
        // SAFETY: sysconf takes an integer and reads no memory of ours.
        let page_size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        let shared = mem.iter().any(|r| r.file_offset().is_some());
        MadviseDiscard {
            mem,
            page_size: usize::try_from(page_size).unwrap_or(4096).max(4096),
            advice: if shared {
                libc::MADV_REMOVE
            } else {
                libc::MADV_DONTNEED
            },
        }
    }
}

impl DiscardMemory for MadviseDiscard {
    fn discard(&self, guest_addr: GuestAddress, len: u64) -> std::io::Result<u64> {
        let len = usize::try_from(len)
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
        let mut discarded = 0u64;
        for slice in self.mem.get_slices(guest_addr, len) {
            let slice = slice.map_err(std::io::Error::other)?;
            let guard = slice.ptr_guard_mut();
            let start = guard.as_ptr() as usize;
            let end = start + slice.len();
            // Only whole host pages inside the range.
            let first = start.next_multiple_of(self.page_size);
            let last = end - end % self.page_size;
            if first >= last {
                continue;
            }
            // SAFETY: `[first, last)` lies inside one mapping of guest memory (`get_slices`
            // returns slices within a region), kept alive by the `Arc` in `self.mem`, and is
            // page-aligned. Rust code never holds references into guest memory (it is accessed
            // through volatile accessors only), so dropping the pages invalidates no Rust
            // value; the guest sees zero-filled pages, which is what the balloon protocol
            // promises it, and KVM follows the host page tables through its MMU notifier.
            let rc =
                unsafe { libc::madvise(first as *mut libc::c_void, last - first, self.advice) };
            if rc != 0 {
                return Err(std::io::Error::last_os_error());
            }
            discarded += (last - first) as u64;
        }
        Ok(discarded)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    /// Where RAM starts on this arch (0 on x86_64, 2 GiB on aarch64).
    fn ram_base() -> u64 {
        ram_ranges(1)[0].0
    }

    #[test]
    fn test_madvise_discard_zeroes_whole_pages_only() {
        for shared in [false, true] {
            discard_zeroes_whole_pages_only(shared);
        }
    }

    fn discard_zeroes_whole_pages_only(shared: bool) {
        let base = ram_base();
        let mem = create(64 << 20, shared).unwrap();
        mem.write_slice(&[0xabu8; 3 * 4096], GuestAddress(base + 0x10000))
            .unwrap();
        let d = MadviseDiscard::new(mem.clone());
        // A range starting mid-page: only the two whole pages inside go.
        let n = d
            .discard(GuestAddress(base + 0x10800), 2 * 4096 + 0x800)
            .unwrap();
        assert_eq!(n, 2 * 4096);
        let mut buf = [0u8; 3 * 4096];
        mem.read_slice(&mut buf, GuestAddress(base + 0x10000))
            .unwrap();
        assert!(buf[..4096].iter().all(|&b| b == 0xab));
        assert!(buf[4096..].iter().all(|&b| b == 0));
        assert!(d.discard(GuestAddress(base + (64 << 20)), 4096).is_err());
    }

    #[test]
    fn test_create_splits_at_mmio_gap() {
        let mem = create(64 << 20, false).unwrap();
        assert_eq!(mem.num_regions(), 1);
        assert_eq!(mem.last_addr().0, ram_base() + (64 << 20) - 1);
    }

    /// x86_64's RAM is split around the 32-bit MMIO hole (aarch64's is one range).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn test_shared_memory_is_one_memfd_at_increasing_offsets() {
        let mem = create(4 << 30, true).unwrap();
        assert_eq!(mem.num_regions(), 2);
        let offsets: Vec<u64> = mem
            .iter()
            .map(|r| r.file_offset().expect("shared regions have a file").start())
            .collect();
        let first_len = mem.iter().next().unwrap().len();
        assert_eq!(offsets, vec![0, first_len]);
    }
}
