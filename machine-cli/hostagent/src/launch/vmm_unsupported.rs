//! rmachine-vmm is a KVM VMM: on other systems the vmm driver is refused (the qemu driver
//! runs there with hvf or whpx).

use rmachine_machine::store::Machine;

use super::RunningVm;
use crate::SharedState;

pub(crate) async fn launch_vmm(
    machine: &Machine,
    _state: &SharedState,
) -> anyhow::Result<RunningVm> {
    anyhow::bail!(
        "machine {}: the vmm driver (rmachine-vmm, KVM) runs on Linux only; use `rmachine config set driver qemu -m {}`",
        machine.name,
        machine.name
    )
}
