//! Booting an aarch64 guest: the kernel `Image` at the start of RAM, an initrd after it, the
//! device tree in the last 2 MiB of RAM; vCPU 0 enters the kernel with X0 holding the device
//! tree's address (booting.rst: "Primary CPU general-purpose register settings"), the others
//! start powered off and are brought up by the guest through PSCI `CPU_ON`.

use hypervisor::aarch64::{gic_redist_size, kvm_mpidr, CoreReg, VcpuInit, PSTATE_BOOT};
use hypervisor::Vcpu;
use linux_loader::cmdline::Cmdline;
use vm_memory::{Bytes, GuestAddress};

use super::fdt::{self, FdtConfig, MmioDevice};
use super::{image, BootError};
use crate::config::ResolvedConfig;
use crate::device_manager::DeviceManager;
use crate::layout::*;
use devices::GuestMemory;

/// How the vCPUs boot.
#[derive(Debug, Clone)]
pub struct BootSetup {
    /// The kernel's entry point.
    pub entry: u64,
    /// Where the device tree is.
    pub fdt_addr: u64,
    /// Number of vCPUs.
    pub vcpu_count: u8,
}

impl BootSetup {
    /// The boot protocol, as the control API reports it.
    pub fn protocol_name(&self) -> String {
        "Arm64Image".to_string()
    }
}

/// Page size the initrd is aligned to.
const PAGE: u64 = 0x1000;

/// Loads the kernel and initrd and writes the device tree.
pub fn prepare(
    config: &ResolvedConfig,
    mem: &GuestMemory,
    devices: &DeviceManager,
    _hv: &dyn hypervisor::Hypervisor,
) -> Result<BootSetup, BootError> {
    let ram = (RAM_START, config.memory_bytes);
    let kernel_path = &config.config.kernel.path;
    let kernel = image::load(mem, kernel_path, ram)
        .map_err(|e| BootError::Image(kernel_path.display().to_string(), e))?;
    let fdt_addr = fdt_addr(config.memory_bytes);
    let initrd = match &config.config.kernel.initrd {
        Some(path) => Some(load_initrd(mem, path, kernel.end, fdt_addr)?),
        None => None,
    };
    // Validated like the x86 command line (length, no NUL), then handed over in the tree.
    let mut cmdline = Cmdline::new(CMDLINE_MAX_SIZE).map_err(BootError::Cmdline)?;
    cmdline
        .insert_str(&config.cmdline)
        .map_err(BootError::Cmdline)?;
    let cmdline = cmdline
        .as_cstring()
        .map_err(BootError::Cmdline)?
        .to_string_lossy()
        .into_owned();
    let virtio = devices
        .virtio_cmdline_entries()
        .into_iter()
        .map(|(addr, spi)| MmioDevice {
            addr,
            size: devices::transport::MMIO_SIZE,
            spi,
        })
        .collect();
    let blob = fdt::create(&FdtConfig {
        cpu_mpidrs: (0..config.vcpus).map(kvm_mpidr).collect(),
        ram,
        cmdline: &cmdline,
        initrd,
        gic_dist: (GIC_DIST_ADDR, GIC_DIST_SIZE),
        gic_redist: (GIC_REDIST_ADDR, gic_redist_size(config.vcpus)),
        serial: MmioDevice {
            addr: SERIAL_ADDR,
            size: SERIAL_SIZE,
            spi: SERIAL_IRQ,
        },
        virtio,
        max_size: FDT_MAX_SIZE as usize,
    })
    .map_err(BootError::Fdt)?;
    if kernel.end > fdt_addr {
        return Err(BootError::Image(
            kernel_path.display().to_string(),
            image::ImageError::TooLarge {
                size: kernel.end - kernel.entry,
                text_offset: kernel.entry - RAM_START,
                ram: fdt_addr - RAM_START,
            },
        ));
    }
    mem.write_slice(&blob, GuestAddress(fdt_addr))
        .map_err(|e| BootError::WriteMemory("device tree", e))?;
    tracing::info!(
        entry = format_args!("{:#x}", kernel.entry),
        fdt = format_args!("{fdt_addr:#x}"),
        fdt_bytes = blob.len(),
        vcpus = config.vcpus,
        memory_mib = config.memory_bytes >> 20,
        cmdline = %cmdline,
        "booting"
    );
    Ok(BootSetup {
        entry: kernel.entry,
        fdt_addr,
        vcpu_count: config.vcpus,
    })
}

/// Loads the initrd right below the device tree, page aligned, above the kernel.
fn load_initrd(
    mem: &GuestMemory,
    path: &std::path::Path,
    kernel_end: u64,
    fdt_addr: u64,
) -> Result<(u64, u64), BootError> {
    let name = path.display().to_string();
    let mut file = std::fs::File::open(path).map_err(|e| BootError::LoadInitrd(name.clone(), e))?;
    let size = file
        .metadata()
        .map_err(|e| BootError::LoadInitrd(name.clone(), e))?
        .len();
    let addr = fdt_addr.checked_sub(size).map(|a| a & !(PAGE - 1));
    let Some(addr) = addr.filter(|&a| a >= kernel_end) else {
        return Err(BootError::LoadInitrd(
            name,
            std::io::Error::other("initrd does not fit between the kernel and the device tree"),
        ));
    };
    mem.read_exact_volatile_from(GuestAddress(addr), &mut file, size as usize)
        .map_err(|e| BootError::LoadInitrd(name, std::io::Error::other(e.to_string())))?;
    Ok((addr, size))
}

/// Initialises vCPU `id` (PSCI 0.2; powered off unless it is the boot vCPU) and sets the boot
/// vCPU's registers: PC at the kernel, X0 the device tree, X1-X3 zero, EL1h with DAIF masked.
pub fn setup_vcpu(vcpu: &dyn Vcpu, id: u8, boot: &BootSetup) -> Result<(), String> {
    let err = |source| crate::vcpu::error_chain(&BootError::Vcpu { id, source });
    vcpu.init(&VcpuInit {
        powered_off: id != 0,
    })
    .map_err(err)?;
    if id == 0 {
        for (reg, value) in [
            (CoreReg::Pstate, PSTATE_BOOT),
            (CoreReg::Pc, boot.entry),
            (CoreReg::X(0), boot.fdt_addr),
            (CoreReg::X(1), 0),
            (CoreReg::X(2), 0),
            (CoreReg::X(3), 0),
        ] {
            vcpu.set_core_reg(reg, value).map_err(err)?;
        }
    }
    Ok(())
}
