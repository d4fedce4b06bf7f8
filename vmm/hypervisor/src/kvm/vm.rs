//! A KVM VM: memory slots, the in-kernel irqchip and PIT, interrupt injection.

use kvm_bindings::{
    kvm_msi, kvm_pit_config, kvm_userspace_memory_region, KVM_MEM_LOG_DIRTY_PAGES,
    KVM_MEM_READONLY, KVM_PIT_SPEAKER_DUMMY,
};
use std::sync::Arc;

use kvm_ioctls::{Kvm, VmFd};
use vmm_sys_util::eventfd::EventFd;

use super::vcpu::KvmVcpu;
use crate::{HypervisorError, IrqFd, MemoryFlags, Result, Vcpu, Vm, VmConfig};

/// Where KVM puts the three pages of the real-mode TSS (just below the IOAPIC/LAPIC window and
/// the 4 GiB boundary, outside any RAM the VMM maps).
const KVM_TSS_ADDRESS: usize = 0xfffb_d000;

/// A VM backed by a KVM VM file descriptor.
pub struct KvmVm {
    fd: VmFd,
    /// The MSRs a vCPU snapshot saves (KVM_GET_MSR_INDEX_LIST, read when the VM is created).
    msrs_to_save: Arc<Vec<u32>>,
}

impl KvmVm {
    pub(super) fn new(kvm: &Kvm, _config: &VmConfig) -> Result<Self> {
        let fd = kvm
            .create_vm()
            .map_err(|e| HypervisorError::CreateVm(e.into()))?;
        fd.set_tss_address(KVM_TSS_ADDRESS)
            .map_err(|e| HypervisorError::SetupIrqchip {
                what: "tss",
                source: e.into(),
            })?;
        fd.create_irq_chip()
            .map_err(|e| HypervisorError::SetupIrqchip {
                what: "irqchip",
                source: e.into(),
            })?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        fd.create_pit2(pit)
            .map_err(|e| HypervisorError::SetupIrqchip {
                what: "pit",
                source: e.into(),
            })?;
        let index_list = kvm
            .get_msr_index_list()
            .map_err(|e| HypervisorError::CreateVm(e.into()))?;
        Ok(KvmVm {
            fd,
            msrs_to_save: Arc::new(super::state::msrs_to_save(index_list.as_slice())),
        })
    }
}

impl Vm for KvmVm {
    unsafe fn map_memory(
        &self,
        slot: u32,
        guest_addr: u64,
        host_ptr: *mut u8,
        len: u64,
        flags: MemoryFlags,
    ) -> Result<()> {
        let mut kvm_flags = 0;
        if flags.read_only {
            kvm_flags |= KVM_MEM_READONLY;
        }
        if flags.log_dirty {
            kvm_flags |= KVM_MEM_LOG_DIRTY_PAGES;
        }
        let region = kvm_userspace_memory_region {
            slot,
            flags: kvm_flags,
            guest_phys_addr: guest_addr,
            memory_size: len,
            userspace_addr: host_ptr as u64,
        };
        // SAFETY: the caller guarantees (this function's contract) that `host_ptr` points to
        // `len` bytes of mapped memory that outlive the VM and carry no Rust aliasing rules.
        unsafe { self.fd.set_user_memory_region(region) }.map_err(|e| HypervisorError::MapMemory {
            slot,
            guest_addr,
            source: e.into(),
        })
    }

    fn create_vcpu(&self, id: u8) -> Result<Box<dyn Vcpu>> {
        let fd = self
            .fd
            .create_vcpu(u64::from(id))
            .map_err(|e| HypervisorError::CreateVcpu {
                id,
                source: e.into(),
            })?;
        Ok(Box::new(KvmVcpu::new(fd, self.msrs_to_save.clone())))
    }

    fn inject_irq(&self, line: u32) -> Result<()> {
        let to_err = |e: kvm_ioctls::Error| HypervisorError::Interrupt {
            line,
            source: e.into(),
        };
        self.fd.set_irq_line(line, true).map_err(to_err)?;
        self.fd.set_irq_line(line, false).map_err(to_err)
    }

    fn signal_msi(&self, addr: u64, data: u32) -> Result<()> {
        let msi = kvm_msi {
            address_lo: addr as u32,
            address_hi: (addr >> 32) as u32,
            data,
            ..Default::default()
        };
        self.fd
            .signal_msi(msi)
            .map(|_| ())
            .map_err(|e| HypervisorError::Interrupt {
                line: data,
                source: e.into(),
            })
    }

    fn irqfd(&self) -> Option<&dyn IrqFd> {
        Some(self)
    }

    fn save_state(&self) -> Result<crate::x86_64::VmState> {
        super::state::save_vm(&self.fd)
    }

    fn restore_state(&self, state: &crate::x86_64::VmState) -> Result<crate::x86_64::ClockRestore> {
        super::state::restore_vm(&self.fd, state)
    }
}

impl IrqFd for KvmVm {
    fn register(&self, fd: &EventFd, line: u32) -> Result<()> {
        self.fd
            .register_irqfd(fd, line)
            .map_err(|e| HypervisorError::Interrupt {
                line,
                source: e.into(),
            })
    }
}
