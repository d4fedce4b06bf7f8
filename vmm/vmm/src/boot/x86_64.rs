//! Booting an x86_64 guest: what `prepare` loads and writes, and each vCPU's setup.

use hypervisor::x86_64::CpuidEntry;
use hypervisor::Vcpu;

use super::{cpuid, loader, mptable, regs, BootError, BootProtocol};
use crate::config::ResolvedConfig;
use crate::device_manager::DeviceManager;
use devices::GuestMemory;

/// How the vCPUs boot.
#[derive(Debug, Clone)]
pub struct BootSetup {
    /// Entry point.
    pub entry: u64,
    /// Protocol.
    pub protocol: BootProtocol,
    /// CPUID as KVM supports it.
    pub supported_cpuid: Vec<CpuidEntry>,
    /// Features to hide.
    pub disabled_features: Vec<cpuid::Feature>,
    /// Number of vCPUs.
    pub vcpu_count: u8,
}

impl BootSetup {
    /// The boot protocol, as the control API reports it.
    pub fn protocol_name(&self) -> String {
        format!("{:?}", self.protocol)
    }
}

/// Loads a cold boot's kernel, initrd, command line and boot tables into guest memory.
pub fn prepare(
    config: &ResolvedConfig,
    mem: &GuestMemory,
    devices: &DeviceManager,
    hv: &dyn hypervisor::Hypervisor,
) -> Result<BootSetup, BootError> {
    let kernel = loader::load_kernel(mem, &config.config.kernel.path)?;
    let initrd = match &config.config.kernel.initrd {
        Some(path) => Some(loader::load_initrd(mem, path, kernel.end)?),
        None => None,
    };
    let cmdline = loader::build_cmdline(&config.cmdline, &devices.virtio_cmdline_entries())?;
    let cmdline_len = loader::write_cmdline(mem, &cmdline)?;
    loader::write_boot_info(mem, &kernel, cmdline_len, initrd, config.memory_bytes)?;
    mptable::write(mem, config.vcpus)?;
    regs::write_boot_tables(mem, kernel.protocol)?;
    let supported_cpuid = hv.supported_cpuid().map_err(BootError::SupportedCpuid)?;
    tracing::info!(
        entry = format_args!("{:#x}", kernel.entry),
        protocol = ?kernel.protocol,
        vcpus = config.vcpus,
        memory_mib = config.memory_bytes >> 20,
        cmdline = %cmdline.as_cstring().map(|c| c.to_string_lossy().into_owned()).unwrap_or_default(),
        "booting"
    );
    Ok(BootSetup {
        entry: kernel.entry,
        protocol: kernel.protocol,
        supported_cpuid,
        disabled_features: config.disabled_features.clone(),
        vcpu_count: config.vcpus,
    })
}

/// Sets vCPU `id`'s CPUID and boot registers.
pub fn setup_vcpu(vcpu: &dyn Vcpu, id: u8, boot: &BootSetup) -> Result<(), String> {
    let cpuid = cpuid::filter(
        &boot.supported_cpuid,
        id,
        boot.vcpu_count,
        &boot.disabled_features,
    );
    vcpu.set_cpuid(&cpuid)
        .map_err(|e| format!("cannot set cpuid of vcpu {id}: {e}"))?;
    regs::setup_vcpu(vcpu, id, boot.entry, boot.protocol).map_err(|e| crate::vcpu::error_chain(&e))
}
