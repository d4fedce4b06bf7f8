//! The x86_64 side of a KVM VM: the in-kernel irqchip (PIC, IOAPIC, LAPICs), the PIT, the
//! TSS, IOAPIC pin injection and MSIs.

use std::sync::Arc;

use kvm_bindings::{kvm_msi, kvm_pit_config, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Cap, Kvm};

use super::vcpu::VcpuArch;
use super::vm::KvmVm;
use crate::x86_64::CpuidEntry;
use crate::{HypervisorError, IrqFd, MemoryFlags, Result, Vcpu, Vm, VmConfig};

/// Where KVM puts the three pages of the real-mode TSS (just below the IOAPIC/LAPIC window and
/// the 4 GiB boundary, outside any RAM the VMM maps).
const KVM_TSS_ADDRESS: usize = 0xfffb_d000;

/// Leaf 1 ECX: the local APIC timer has a TSC-deadline mode.
const LEAF1_ECX_TSC_DEADLINE: u32 = 1 << 24;

/// Capabilities the VMM cannot run without.
pub(super) const REQUIRED_CAPS: [(Cap, &str); 5] = [
    (Cap::Irqchip, "irqchip"),
    (Cap::Pit2, "pit2"),
    (Cap::UserMemory, "user_memory"),
    (Cap::SetTssAddr, "set_tss_addr"),
    (Cap::ImmediateExit, "immediate_exit"),
];

/// VM and vCPU state can be saved and restored.
/// Most vCPUs a VM may have: KVM's limit.
pub(super) fn max_vcpus(kvm: &Kvm) -> u32 {
    kvm.get_max_vcpus() as u32
}

/// VM and vCPU state can be saved and restored.
pub(super) const SNAPSHOTS: bool = true;

/// What an x86_64 VM keeps besides its fd.
pub(in crate::kvm) struct VmArch {
    /// The MSRs a vCPU snapshot saves (KVM_GET_MSR_INDEX_LIST, read when the VM is created).
    pub msrs_to_save: Arc<Vec<u32>>,
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
            arch: VmArch {
                msrs_to_save: Arc::new(super::state::msrs_to_save(index_list.as_slice())),
            },
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
        // SAFETY: this function's contract is `map`'s, upheld by the caller.
        unsafe { self.map(slot, guest_addr, host_ptr, len, flags) }
    }

    fn create_vcpu(&self, id: u8) -> Result<Box<dyn Vcpu>> {
        let arch = VcpuArch {
            msrs_to_save: self.arch.msrs_to_save.clone(),
        };
        Ok(Box::new(self.new_vcpu(id, arch)?))
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

    fn vcpus_created(&self) -> Result<()> {
        Ok(())
    }

    fn save_state(&self) -> Result<crate::x86_64::VmState> {
        super::state::save_vm(&self.fd)
    }

    fn restore_state(&self, state: &crate::x86_64::VmState) -> Result<crate::x86_64::ClockRestore> {
        super::state::restore_vm(&self.fd, state)
    }
}

/// The CPUID KVM supports, with the TSC-deadline timer KVM emulates but leaves out.
pub(super) fn supported_cpuid(kvm: &Kvm) -> Result<Vec<CpuidEntry>> {
    let cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(|e| HypervisorError::SupportedCpuid(e.into()))?;
    // KVM emulates the TSC-deadline timer mode of the local APIC but leaves it out of
    // the supported CPUID (its API documentation: check KVM_CAP_TSC_DEADLINE_TIMER).
    // Without it a Linux guest calibrates its APIC timer against the PIT, which fails
    // under nested virtualization ("APIC timer disabled due to verification failure").
    let tsc_deadline = kvm.check_extension(Cap::TscDeadlineTimer);
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
