//! Booting an x86_64 guest: kernel loading (bzImage, ELF with or without a PVH note), the boot
//! information (Linux `boot_params` or PVH `hvm_start_info`), the MP table, CPUID and the
//! initial vCPU state.

pub mod cpuid;
pub mod loader;
pub mod mptable;
pub mod regs;

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
