//! Portable aarch64 vCPU state, shared by every backend (KVM now, Hypervisor.framework later).
//!
//! Plain data, compiled on every host so that the VMM's boot code and its unit tests build
//! anywhere; only an aarch64 backend acts on it.

/// A core register a booting vCPU needs set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CoreReg {
    /// General purpose register `Xn`, n in 0..=30 (larger values are refused by backends).
    X(u8),
    /// The program counter.
    Pc,
    /// The processor state (SPSR layout: exception level, stack pointer select, DAIF masks).
    Pstate,
}

/// How a vCPU starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VcpuInit {
    /// Powered off until the boot vCPU starts it through PSCI `CPU_ON` (every vCPU but the
    /// first: Linux brings secondaries up with the `psci` enable method).
    pub powered_off: bool,
}

/// The GICv3 distributor's guest physical address (where QEMU's `virt` machine has it).
/// Every aarch64 backend places the GIC here; the VMM's memory map and device tree use it.
pub const GIC_DIST_ADDR: u64 = 0x0800_0000;
/// Size of the distributor's registers.
pub const GIC_DIST_SIZE: u64 = 0x1_0000;
/// The first redistributor; one frame pair of [`GIC_REDIST_SIZE_PER_VCPU`] per vCPU follows.
pub const GIC_REDIST_ADDR: u64 = 0x080a_0000;
/// Size of one vCPU's redistributor (RD_base and SGI_base frames, 64 KiB each).
pub const GIC_REDIST_SIZE_PER_VCPU: u64 = 0x2_0000;
/// Where the redistributors must end (the next device of the memory map starts there).
pub const GIC_REDIST_END: u64 = 0x0900_0000;
/// Most vCPUs whose redistributors fit below [`GIC_REDIST_END`] (123).
pub const GIC_MAX_VCPUS: u32 =
    ((GIC_REDIST_END - GIC_REDIST_ADDR) / GIC_REDIST_SIZE_PER_VCPU) as u32;
/// Shared peripheral interrupts (SPIs) the GIC provides: lines 0..GIC_SPI_COUNT, which are
/// interrupt ids 32.. (`Vm::inject_irq` and irqfds take the line).
pub const GIC_SPI_COUNT: u32 = 96;
/// Interrupt id of SPI 0.
pub const GIC_SPI_BASE: u32 = 32;

/// Size of the redistributor region of `vcpu_count` vCPUs.
pub fn gic_redist_size(vcpu_count: u8) -> u64 {
    u64::from(vcpu_count) * GIC_REDIST_SIZE_PER_VCPU
}

/// `PSR_MODE_EL1h`: EL1 with its own stack pointer (arch/arm64/include/uapi/asm/ptrace.h).
pub const PSR_MODE_EL1H: u64 = 0x5;
/// `PSR_F_BIT | PSR_I_BIT | PSR_A_BIT | PSR_D_BIT`: every exception masked.
pub const PSR_DAIF_MASKED: u64 = 0x3c0;
/// The processor state the Linux arm64 boot protocol asks for: EL1h, DAIF masked.
pub const PSTATE_BOOT: u64 = PSR_MODE_EL1H | PSR_DAIF_MASKED;

/// `KVM_REG_ARM64` (linux/kvm.h).
const KVM_REG_ARM64: u64 = 0x6000_0000_0000_0000;
/// `KVM_REG_SIZE_U64`.
const KVM_REG_SIZE_U64: u64 = 0x0030_0000_0000_0000;
/// `KVM_REG_ARM_CORE` (arch/arm64/include/uapi/asm/kvm.h).
const KVM_REG_ARM_CORE: u64 = 0x0010_0000;
/// Offset of `regs.pc` in `struct kvm_regs` (31 X registers and SP before it).
const PC_OFFSET: u64 = 32 * 8;
/// Offset of `regs.pstate`.
const PSTATE_OFFSET: u64 = 33 * 8;

impl CoreReg {
    /// The register's `KVM_{GET,SET}_ONE_REG` id (`KVM_REG_ARM_CORE_REG`: the offset in
    /// `struct kvm_regs` counted in 32-bit words), or `None` for an X register above 30.
    pub fn kvm_id(self) -> Option<u64> {
        let offset = match self {
            CoreReg::X(n) if n <= 30 => u64::from(n) * 8,
            CoreReg::X(_) => return None,
            CoreReg::Pc => PC_OFFSET,
            CoreReg::Pstate => PSTATE_OFFSET,
        };
        Some(KVM_REG_ARM64 | KVM_REG_SIZE_U64 | KVM_REG_ARM_CORE | (offset / 4))
    }
}

/// The affinity value (MPIDR_EL1 without its RES1 bit 31) KVM gives vCPU `id`: Aff0 holds the
/// low 4 bits, Aff1 the next 8 (arch/arm64/kvm/sys_regs.c `reset_mpidr`). The device tree's
/// `cpu@N` `reg` must carry it.
pub fn kvm_mpidr(id: u8) -> u64 {
    let id = u64::from(id);
    (id & 0x0f) | (((id >> 4) & 0xff) << 8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_core_reg_ids_match_linux() {
        // The values QEMU and Firecracker log for these registers.
        assert_eq!(CoreReg::X(0).kvm_id(), Some(0x6030_0000_0010_0000));
        assert_eq!(CoreReg::X(1).kvm_id(), Some(0x6030_0000_0010_0002));
        assert_eq!(CoreReg::Pc.kvm_id(), Some(0x6030_0000_0010_0040));
        assert_eq!(CoreReg::Pstate.kvm_id(), Some(0x6030_0000_0010_0042));
        assert_eq!(CoreReg::X(31).kvm_id(), None);
    }

    const _: () = assert!(GIC_DIST_ADDR + GIC_DIST_SIZE <= GIC_REDIST_ADDR);

    #[test]
    fn test_gic_regions_fit() {
        assert_eq!(GIC_MAX_VCPUS, 123);
        assert!(GIC_REDIST_ADDR + gic_redist_size(GIC_MAX_VCPUS as u8) <= GIC_REDIST_END);
    }

    #[test]
    fn test_boot_pstate_and_mpidr() {
        assert_eq!(PSTATE_BOOT, 0x3c5);
        assert_eq!(kvm_mpidr(3), 3);
        assert_eq!(kvm_mpidr(17), 0x101);
    }
}
