//! The aarch64 side of a [`KvmVcpu`]: `KVM_ARM_VCPU_INIT` with PSCI 0.2 and core registers.

use kvm_bindings::{kvm_vcpu_init, KVM_ARM_VCPU_POWER_OFF, KVM_ARM_VCPU_PSCI_0_2};

use super::vcpu::KvmVcpu;
use crate::aarch64::{CoreReg, VcpuInit};
use crate::{HypervisorError, Result, Vcpu, VcpuKicker, VmExit};

/// What the aarch64 accessors need besides the vCPU fd.
pub(in crate::kvm) struct VcpuArch {
    /// The VM's preferred target (`KVM_ARM_PREFERRED_TARGET`).
    pub target: kvm_vcpu_init,
}

/// The `kvm_vcpu_init` of a vCPU: the preferred target with PSCI 0.2, powered off if asked.
fn vcpu_init_of(target: &kvm_vcpu_init, init: &VcpuInit) -> kvm_vcpu_init {
    let mut kvi = *target;
    kvi.features[0] |= 1 << KVM_ARM_VCPU_PSCI_0_2;
    if init.powered_off {
        kvi.features[0] |= 1 << KVM_ARM_VCPU_POWER_OFF;
    }
    kvi
}

impl Vcpu for KvmVcpu {
    fn run(&mut self) -> Result<VmExit<'_>> {
        self.run_exit()
    }

    fn kicker(&self) -> Box<dyn VcpuKicker> {
        self.new_kicker()
    }

    fn init(&self, init: &VcpuInit) -> Result<()> {
        self.fd
            .vcpu_init(&vcpu_init_of(&self.arch.target, init))
            .map_err(Self::state_err("init (KVM_ARM_VCPU_INIT)"))
    }

    fn set_core_reg(&self, reg: CoreReg, value: u64) -> Result<()> {
        let id = reg.kvm_id().ok_or_else(|| HypervisorError::VcpuState {
            op: "set a core register",
            source: std::io::Error::other(format!("{reg:?} does not exist")),
        })?;
        self.fd
            .set_one_reg(id, &value.to_le_bytes())
            .map(|_| ())
            .map_err(Self::state_err("set a core register"))
    }

    fn save_state(&self) -> Result<crate::x86_64::VcpuState> {
        Err(HypervisorError::Unsupported("saving an aarch64 vcpu"))
    }

    fn restore_state(&self, _state: &crate::x86_64::VcpuState) -> Result<()> {
        Err(HypervisorError::Unsupported("restoring an aarch64 vcpu"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_vcpu_init_features() {
        let target = kvm_vcpu_init {
            target: 5,
            features: [0; 7],
        };
        let boot = vcpu_init_of(&target, &VcpuInit { powered_off: false });
        assert_eq!(boot.target, 5);
        assert_eq!(boot.features[0], 1 << 2);
        let secondary = vcpu_init_of(&target, &VcpuInit { powered_off: true });
        assert_eq!(secondary.features[0], (1 << 2) | 1);
    }
}
