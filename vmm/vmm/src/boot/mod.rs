//! Booting a guest. x86_64: kernel loading (bzImage, ELF with or without a PVH note), the boot
//! information (Linux `boot_params` or PVH `hvm_start_info`), the MP table, CPUID and the
//! initial vCPU state. aarch64: the kernel `Image`, the device tree, PSCI vCPU init and the
//! boot registers. [`fdt`] and [`image`] are plain code compiled on every host, so their
//! unit tests run anywhere.
//!
//! Each arch's file exposes the same three items: [`BootSetup`], `prepare` (loads the kernel
//! and writes the boot structures) and `setup_vcpu`.

#[cfg(target_arch = "aarch64")]
mod aarch64;
pub mod cpuid;
pub mod fdt;
pub mod image;
#[cfg(target_arch = "x86_64")]
pub mod loader;
#[cfg(target_arch = "x86_64")]
pub mod mptable;
#[cfg(target_arch = "x86_64")]
pub mod regs;
#[cfg(target_arch = "x86_64")]
mod x86_64;

#[cfg(target_arch = "aarch64")]
pub use self::aarch64::{prepare, setup_vcpu, BootSetup};
#[cfg(target_arch = "x86_64")]
pub use self::x86_64::{prepare, setup_vcpu, BootSetup};
#[cfg(target_arch = "x86_64")]
pub use loader::{load_kernel, BootProtocol, KernelImage};

/// Errors of the boot preparation.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The kernel file could not be opened.
    #[error("cannot open kernel {0}")]
    OpenKernel(String, #[source] std::io::Error),
    /// The kernel is neither a usable ELF nor a bzImage.
    #[error("cannot load kernel {0}")]
    LoadKernel(String, #[source] linux_loader::loader::Error),
    /// The arm64 kernel `Image` is unusable.
    #[error("cannot load kernel {0}")]
    Image(String, #[source] image::ImageError),
    /// The device tree could not be built.
    #[error("cannot build the device tree")]
    Fdt(#[source] fdt::FdtError),
    /// The initrd could not be read or does not fit.
    #[error("cannot load initrd {0}")]
    LoadInitrd(String, #[source] std::io::Error),
    /// The command line is invalid or too long.
    #[error("invalid kernel command line")]
    Cmdline(#[source] linux_loader::cmdline::Error),
    /// Writing boot structures into guest memory failed.
    #[error("cannot write {0} into guest memory")]
    WriteMemory(&'static str, #[source] vm_memory::GuestMemoryError),
    /// The MP table does not fit.
    #[error("cannot write the mp table")]
    MpTable(#[source] vm_memory::GuestMemoryError),
    /// The hypervisor's CPUID could not be read.
    #[error("cannot read the cpuid the hypervisor supports")]
    SupportedCpuid(#[source] hypervisor::HypervisorError),
    /// Setting vCPU state failed.
    #[error("cannot set up vcpu {id}")]
    Vcpu {
        /// vCPU id.
        id: u8,
        /// The cause.
        #[source]
        source: hypervisor::HypervisorError,
    },
}
