//! The KVM backend (Linux). The only code of the workspace that touches `kvm-ioctls`.
//!
//! `vcpu.rs` and `vm.rs` hold what both arches share (the kick, `KVM_RUN`'s exits, memory
//! slots, irqfd); `*_x86_64.rs` and `*_aarch64.rs` the interrupt controllers, the register
//! accessors and the `Vm`/`Vcpu` implementations.

#[cfg(target_arch = "x86_64")]
mod state;
mod vcpu;
#[cfg(target_arch = "aarch64")]
mod vcpu_aarch64;
#[cfg(target_arch = "x86_64")]
mod vcpu_x86_64;
mod vm;
#[cfg(target_arch = "aarch64")]
mod vm_aarch64;
#[cfg(target_arch = "x86_64")]
mod vm_x86_64;

#[cfg(target_arch = "x86_64")]
pub use state::{vcpu_save_ioctls, vm_save_ioctls};
pub use vcpu::{kick_signal, KvmVcpu, KvmVcpuKicker};
pub use vm::KvmVm;
#[cfg(target_arch = "aarch64")]
use vm_aarch64::{max_vcpus, REQUIRED_CAPS, SNAPSHOTS};
#[cfg(target_arch = "aarch64")]
pub use vm_aarch64::{vcpu_save_ioctls, vm_save_ioctls};
#[cfg(target_arch = "x86_64")]
use vm_x86_64::{max_vcpus, REQUIRED_CAPS, SNAPSHOTS};

use kvm_ioctls::{Cap, Kvm};

use crate::{Capabilities, Hypervisor, HypervisorError, Result, Vm, VmConfig};

/// `/dev/kvm`.
pub struct KvmHypervisor {
    kvm: Kvm,
}

impl KvmHypervisor {
    /// Opens `/dev/kvm` and checks the capabilities the VMM relies on.
    pub fn new() -> Result<Self> {
        let kvm = Kvm::new().map_err(|e| HypervisorError::Open(e.into()))?;
        for (cap, name) in REQUIRED_CAPS {
            if !kvm.check_extension(cap) {
                return Err(HypervisorError::MissingCapability(name));
            }
        }
        Ok(KvmHypervisor { kvm })
    }
}

impl Hypervisor for KvmHypervisor {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            backend: "kvm",
            irqfd: self.kvm.check_extension(Cap::Irqfd),
            in_kernel_irqchip: true,
            max_vcpus: max_vcpus(&self.kvm),
            max_memory_slots: self.kvm.get_nr_memslots() as u32,
            snapshots: SNAPSHOTS,
        }
    }

    fn create_vm(&self, config: &VmConfig) -> Result<Box<dyn Vm>> {
        let vm = KvmVm::new(&self.kvm, config)?;
        Ok(Box::new(vm))
    }

    #[cfg(target_arch = "x86_64")]
    fn supported_cpuid(&self) -> Result<Vec<crate::x86_64::CpuidEntry>> {
        vm_x86_64::supported_cpuid(&self.kvm)
    }
}
