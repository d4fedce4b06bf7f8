//! A KVM VM: memory slots, vCPU creation, the irqfd fast path. The arch's files set up the
//! in-kernel interrupt controller and implement [`crate::Vm`] on top of these helpers.

use kvm_bindings::{kvm_userspace_memory_region, KVM_MEM_LOG_DIRTY_PAGES, KVM_MEM_READONLY};
use kvm_ioctls::VmFd;
use vmm_sys_util::eventfd::EventFd;

use super::vcpu::{KvmVcpu, VcpuArch};
use crate::{HypervisorError, IrqFd, MemoryFlags, Result};

#[cfg(target_arch = "aarch64")]
pub(super) use super::vm_aarch64::VmArch;
#[cfg(target_arch = "x86_64")]
pub(super) use super::vm_x86_64::VmArch;

/// A VM backed by a KVM VM file descriptor.
pub struct KvmVm {
    pub(super) fd: VmFd,
    /// The arch's interrupt controller and what its vCPUs need.
    pub(super) arch: VmArch,
}

impl KvmVm {
    /// `KVM_SET_USER_MEMORY_REGION`.
    ///
    /// # Safety
    ///
    /// The contract of [`crate::Vm::map_memory`].
    pub(super) unsafe fn map(
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

    /// `KVM_CREATE_VCPU`, wrapped with the arch's per-vCPU data.
    pub(super) fn new_vcpu(&self, id: u8, arch: VcpuArch) -> Result<KvmVcpu> {
        let fd = self
            .fd
            .create_vcpu(u64::from(id))
            .map_err(|e| HypervisorError::CreateVcpu {
                id,
                source: e.into(),
            })?;
        Ok(KvmVcpu::new(fd, arch))
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
