//! The KVM backend (Linux). The only code of the workspace that touches `kvm-ioctls`.

mod state;
mod vcpu;
mod vm;

pub use state::{vcpu_save_ioctls, vm_save_ioctls};
pub use vcpu::{kick_signal, KvmVcpu, KvmVcpuKicker};
pub use vm::KvmVm;

use kvm_bindings::KVM_MAX_CPUID_ENTRIES;
use kvm_ioctls::{Cap, Kvm};

use crate::x86_64::CpuidEntry;
use crate::{Capabilities, Hypervisor, HypervisorError, Result, Vm, VmConfig};

/// Leaf 1 ECX: the local APIC timer has a TSC-deadline mode.
const LEAF1_ECX_TSC_DEADLINE: u32 = 1 << 24;

/// Capabilities the VMM cannot run without.
const REQUIRED_CAPS: [(Cap, &str); 5] = [
    (Cap::Irqchip, "irqchip"),
    (Cap::Pit2, "pit2"),
    (Cap::UserMemory, "user_memory"),
    (Cap::SetTssAddr, "set_tss_addr"),
    (Cap::ImmediateExit, "immediate_exit"),
];

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
            max_vcpus: self.kvm.get_max_vcpus() as u32,
            max_memory_slots: self.kvm.get_nr_memslots() as u32,
        }
    }

    fn create_vm(&self, config: &VmConfig) -> Result<Box<dyn Vm>> {
        let vm = KvmVm::new(&self.kvm, config)?;
        Ok(Box::new(vm))
    }

    fn supported_cpuid(&self) -> Result<Vec<CpuidEntry>> {
        let cpuid = self
            .kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(|e| HypervisorError::SupportedCpuid(e.into()))?;
        // KVM emulates the TSC-deadline timer mode of the local APIC but leaves it out of
        // the supported CPUID (its API documentation: check KVM_CAP_TSC_DEADLINE_TIMER).
        // Without it a Linux guest calibrates its APIC timer against the PIT, which fails
        // under nested virtualization ("APIC timer disabled due to verification failure").
        let tsc_deadline = self.kvm.check_extension(Cap::TscDeadlineTimer);
        Ok(cpuid
            .as_slice()
            .iter()
            .map(|e| {
                let mut ecx = e.ecx;
                if e.function == 1 && tsc_deadline {
                    ecx |= LEAF1_ECX_TSC_DEADLINE;
                }
                CpuidEntry {
                    function: e.function,
                    index: e.index,
                    flags: e.flags,
                    eax: e.eax,
                    ebx: e.ebx,
                    ecx,
                    edx: e.edx,
                }
            })
            .collect())
    }
}
