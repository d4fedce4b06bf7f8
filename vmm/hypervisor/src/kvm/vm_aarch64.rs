//! The aarch64 side of a KVM VM: the in-kernel GICv3 (KVM's vgic device), SPI injection.
//!
//! The arch timer and PSCI need no VM-level setup: the timer is part of every vCPU, and PSCI
//! 0.2 is a vCPU feature ([`crate::Vcpu::init`]); KVM handles `CPU_ON` in the kernel and exits
//! with a system event for `SYSTEM_OFF` and `SYSTEM_RESET`.

use std::sync::Mutex;

use kvm_bindings::{
    kvm_create_device, kvm_device_attr, kvm_device_type_KVM_DEV_TYPE_ARM_VGIC_V3, kvm_vcpu_init,
    KVM_DEV_ARM_VGIC_CTRL_INIT, KVM_DEV_ARM_VGIC_GRP_ADDR, KVM_DEV_ARM_VGIC_GRP_CTRL,
    KVM_DEV_ARM_VGIC_GRP_NR_IRQS, KVM_VGIC_V3_ADDR_TYPE_DIST, KVM_VGIC_V3_ADDR_TYPE_REDIST,
};
use kvm_ioctls::{Cap, DeviceFd, Kvm};

use super::vcpu::VcpuArch;
use super::vm::KvmVm;
use crate::aarch64::{GIC_DIST_ADDR, GIC_REDIST_ADDR, GIC_SPI_BASE, GIC_SPI_COUNT};
use crate::{HypervisorError, IrqFd, MemoryFlags, Result, Vcpu, Vm, VmConfig};

/// Capabilities the VMM cannot run without.
pub(super) const REQUIRED_CAPS: [(Cap, &str); 6] = [
    (Cap::Irqchip, "irqchip"),
    (Cap::UserMemory, "user_memory"),
    (Cap::ImmediateExit, "immediate_exit"),
    (Cap::ArmPsci02, "arm_psci_0_2"),
    (Cap::OneReg, "one_reg"),
    (Cap::DeviceCtrl, "device_ctrl"),
];

/// Most vCPUs a VM may have: KVM's limit, and no more than the redistributors the memory
/// map has room for.
pub(super) fn max_vcpus(kvm: &Kvm) -> u32 {
    (kvm.get_max_vcpus() as u32).min(crate::aarch64::GIC_MAX_VCPUS)
}

/// Snapshots of aarch64 VMs are not implemented (vCPU system registers, the vgic's state).
pub(super) const SNAPSHOTS: bool = false;

/// `KVM_ARM_IRQ_TYPE_SPI << KVM_ARM_IRQ_TYPE_SHIFT` (arch/arm64/include/uapi/asm/kvm.h): the
/// `KVM_IRQ_LINE` encoding of an in-kernel GIC SPI (the low bits are the interrupt id).
const IRQ_LINE_SPI: u32 = 1 << 24;

/// The ioctls a vCPU thread needs for a snapshot: none (aarch64 snapshots are refused).
pub fn vcpu_save_ioctls() -> Vec<u64> {
    Vec::new()
}

/// The ioctls the API thread needs for a snapshot: none (aarch64 snapshots are refused).
pub fn vm_save_ioctls() -> Vec<u64> {
    Vec::new()
}

/// What an aarch64 VM keeps besides its fd.
pub(in crate::kvm) struct VmArch {
    /// `KVM_ARM_PREFERRED_TARGET`: the CPU model every vCPU is initialised as.
    target: kvm_vcpu_init,
    /// The vgic, once [`Vm::vcpus_created`] made it.
    gic: Mutex<Option<DeviceFd>>,
}

impl KvmVm {
    pub(super) fn new(kvm: &Kvm, _config: &VmConfig) -> Result<Self> {
        let fd = kvm
            .create_vm()
            .map_err(|e| HypervisorError::CreateVm(e.into()))?;
        let mut target = kvm_vcpu_init::default();
        fd.get_preferred_target(&mut target)
            .map_err(|e| HypervisorError::CreateVm(e.into()))?;
        Ok(KvmVm {
            fd,
            arch: VmArch {
                target,
                gic: Mutex::new(None),
            },
        })
    }

    /// Creates the vgic (v3) at the fixed addresses of [`crate::aarch64`], sized for the vCPUs
    /// that exist, and initialises it.
    fn create_gic(&self) -> Result<DeviceFd> {
        let err = |what: &'static str| {
            move |e: kvm_ioctls::Error| HypervisorError::SetupIrqchip {
                what,
                source: e.into(),
            }
        };
        let mut device = kvm_create_device {
            type_: kvm_device_type_KVM_DEV_TYPE_ARM_VGIC_V3,
            fd: 0,
            flags: 0,
        };
        let gic = self
            .fd
            .create_device(&mut device)
            .map_err(err("gicv3 (vgic device)"))?;
        for (attr, addr) in [
            (KVM_VGIC_V3_ADDR_TYPE_DIST, GIC_DIST_ADDR),
            (KVM_VGIC_V3_ADDR_TYPE_REDIST, GIC_REDIST_ADDR),
        ] {
            set_attr(&gic, KVM_DEV_ARM_VGIC_GRP_ADDR, u64::from(attr), &addr)
                .map_err(err("gicv3 addresses"))?;
        }
        let nr_irqs: u32 = GIC_SPI_BASE + GIC_SPI_COUNT;
        set_attr(&gic, KVM_DEV_ARM_VGIC_GRP_NR_IRQS, 0, &nr_irqs)
            .map_err(err("gicv3 interrupt count"))?;
        set_attr(
            &gic,
            KVM_DEV_ARM_VGIC_GRP_CTRL,
            u64::from(KVM_DEV_ARM_VGIC_CTRL_INIT),
            &0u64,
        )
        .map_err(err("gicv3 init"))?;
        Ok(gic)
    }
}

/// `KVM_SET_DEVICE_ATTR` of `group`/`attr` with the value `value` points to.
fn set_attr<T>(
    gic: &DeviceFd,
    group: u32,
    attr: u64,
    value: &T,
) -> std::result::Result<(), kvm_ioctls::Error> {
    let attr = kvm_device_attr {
        flags: 0,
        group,
        attr,
        // KVM reads the value through this address during the ioctl; `value` outlives it.
        addr: value as *const T as u64,
    };
    gic.set_device_attr(&attr)
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
            target: self.arch.target,
        };
        Ok(Box::new(self.new_vcpu(id, arch)?))
    }

    fn inject_irq(&self, line: u32) -> Result<()> {
        if line >= GIC_SPI_COUNT {
            return Err(HypervisorError::Interrupt {
                line,
                source: std::io::Error::from_raw_os_error(libc::EINVAL),
            });
        }
        let irq = IRQ_LINE_SPI | (GIC_SPI_BASE + line);
        let to_err = |e: kvm_ioctls::Error| HypervisorError::Interrupt {
            line,
            source: e.into(),
        };
        self.fd.set_irq_line(irq, true).map_err(to_err)?;
        self.fd.set_irq_line(irq, false).map_err(to_err)
    }

    fn signal_msi(&self, _addr: u64, _data: u32) -> Result<()> {
        Err(HypervisorError::Unsupported(
            "message-signalled interrupts (no gicv3 its)",
        ))
    }

    fn irqfd(&self) -> Option<&dyn IrqFd> {
        Some(self)
    }

    fn vcpus_created(&self) -> Result<()> {
        let mut gic = self.arch.gic.lock().unwrap_or_else(|p| p.into_inner());
        if gic.is_none() {
            *gic = Some(self.create_gic()?);
        }
        Ok(())
    }

    fn save_state(&self) -> Result<crate::x86_64::VmState> {
        Err(HypervisorError::Unsupported("saving an aarch64 vm"))
    }

    fn restore_state(
        &self,
        _state: &crate::x86_64::VmState,
    ) -> Result<crate::x86_64::ClockRestore> {
        Err(HypervisorError::Unsupported("restoring an aarch64 vm"))
    }
}
