//! The hypervisor abstraction of `rmachine-vmm`.
//!
//! [`Hypervisor`] is a factory of [`Vm`]s, a [`Vm`] owns guest memory slots, interrupt lines
//! and [`Vcpu`]s, and a [`Vcpu`] runs guest code until a portable [`VmExit`]. The traits assume
//! only what KVM, Hypervisor.framework and WHPX can all do: an eventfd fast path is an optional
//! extra ([`Vm::irqfd`]), and a [`Vcpu`] is created and run on one thread (it need not be
//! `Send`); another thread interrupts it through its [`VcpuKicker`].
//!
//! No `kvm_bindings` type appears in a trait signature: register state uses the plain
//! structures of [`x86_64`] and [`aarch64`]. Both modules are plain data compiled on every
//! host; the arch-specific trait methods exist only on their arch. Snapshots are x86_64's
//! (their documents use [`x86_64`]'s structures): an aarch64 backend refuses them with
//! [`HypervisorError::Unsupported`] and says so in [`Capabilities::snapshots`].

pub mod aarch64;
#[cfg(all(
    feature = "kvm",
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]
pub mod kvm;
pub mod x86_64;

use vmm_sys_util::eventfd::EventFd;

/// Errors of the hypervisor layer. Variants name the failed step; the cause is the source.
#[derive(Debug, thiserror::Error)]
pub enum HypervisorError {
    /// No hypervisor backend is usable on this host.
    #[error("no hypervisor backend is available on this host")]
    NoBackend,
    /// Opening the hypervisor device failed.
    #[error("cannot open the hypervisor")]
    Open(#[source] std::io::Error),
    /// The hypervisor lacks a capability the VMM needs.
    #[error("the hypervisor lacks the {0} capability")]
    MissingCapability(&'static str),
    /// Creating the VM failed.
    #[error("cannot create the vm")]
    CreateVm(#[source] std::io::Error),
    /// Setting up the in-kernel interrupt controller or timer failed.
    #[error("cannot set up the in-kernel {what}")]
    SetupIrqchip {
        /// Which part (irqchip, pit, tss).
        what: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Mapping guest memory failed.
    #[error("cannot map guest memory slot {slot} at {guest_addr:#x}")]
    MapMemory {
        /// The memory slot.
        slot: u32,
        /// Guest physical address of the slot.
        guest_addr: u64,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Creating a vCPU failed.
    #[error("cannot create vcpu {id}")]
    CreateVcpu {
        /// The vCPU id.
        id: u8,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A register or state accessor failed.
    #[error("cannot {op} on a vcpu")]
    VcpuState {
        /// The accessor that failed (e.g. `set_regs`).
        op: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Running the vCPU failed.
    #[error("vcpu run failed")]
    Run(#[source] std::io::Error),
    /// Injecting an interrupt failed.
    #[error("cannot inject interrupt {line}")]
    Interrupt {
        /// The interrupt line or GSI.
        line: u32,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Saving or restoring VM-wide state (clock, interrupt controllers, timer) failed.
    #[error("cannot {op} of the vm")]
    VmState {
        /// The step (e.g. `get_clock`).
        op: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A saved state does not fit this backend (another backend's, or a block of the wrong
    /// size); the message names the part.
    #[error("the saved state does not fit this hypervisor: {0}")]
    StateMismatch(String),
    /// The backend cannot do this on this arch (the message names what).
    #[error("{0} is not supported by this hypervisor backend")]
    Unsupported(&'static str),
    /// Querying supported CPUID leaves failed.
    #[error("cannot query the supported cpuid")]
    SupportedCpuid(#[source] std::io::Error),
}

/// Result of this crate.
pub type Result<T> = std::result::Result<T, HypervisorError>;

/// What a backend can do. Missing features show here, never as `unimplemented!()`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capabilities {
    /// Backend name (`kvm`, later `hvf`, `whpx`).
    pub backend: &'static str,
    /// Interrupts can be raised by writing an eventfd ([`Vm::irqfd`]).
    pub irqfd: bool,
    /// The interrupt controller (x86: LAPIC/IOAPIC/PIC and the PIT; aarch64: the GICv3) is
    /// emulated by the hypervisor.
    pub in_kernel_irqchip: bool,
    /// Highest number of vCPUs one VM may have.
    pub max_vcpus: u32,
    /// Number of memory slots.
    pub max_memory_slots: u32,
    /// VM and vCPU state can be saved and restored ([`Vm::save_state`], [`Vcpu::save_state`]).
    pub snapshots: bool,
}

/// Hypervisor-level settings of a VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmConfig {
    /// Number of vCPUs the VM will have (sizes the interrupt controller and CPUID topology).
    pub vcpu_count: u8,
}

/// Flags of a guest memory mapping.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryFlags {
    /// The guest cannot write (writes exit as MMIO).
    pub read_only: bool,
    /// Track dirty pages (for snapshots and live migration).
    pub log_dirty: bool,
}

/// Why [`Vcpu::run`] returned. Data slices borrow the vCPU's exit buffer: fill `data` of the
/// read variants before calling `run` again.
#[derive(Debug)]
pub enum VmExit<'a> {
    /// The guest read `data.len()` bytes at guest physical `addr` outside RAM.
    MmioRead {
        /// Guest physical address.
        addr: u64,
        /// Bytes to fill with the value read.
        data: &'a mut [u8],
    },
    /// The guest wrote `data` at guest physical `addr` outside RAM.
    MmioWrite {
        /// Guest physical address.
        addr: u64,
        /// Bytes written.
        data: &'a [u8],
    },
    /// x86 `in` from an I/O port.
    IoIn {
        /// The port.
        port: u16,
        /// Bytes to fill with the value read.
        data: &'a mut [u8],
    },
    /// x86 `out` to an I/O port.
    IoOut {
        /// The port.
        port: u16,
        /// Bytes written.
        data: &'a [u8],
    },
    /// The vCPU halted and no interrupt controller in the hypervisor will wake it.
    Halt,
    /// The guest shut down (triple fault on x86, or a power-off request).
    Shutdown,
    /// The guest asked for a reset through the hypervisor (e.g. a system event).
    Reset,
    /// [`VcpuKicker::kick`] interrupted the run.
    Interrupted,
    /// Anything else, described.
    Unhandled(String),
}

/// The factory of VMs.
pub trait Hypervisor: Send + Sync {
    /// What this backend supports.
    fn capabilities(&self) -> Capabilities;

    /// Creates a VM with its interrupt controller and timer set up.
    fn create_vm(&self, config: &VmConfig) -> Result<Box<dyn Vm>>;

    /// The CPUID leaves the hypervisor can present to a guest, before any VMM filtering.
    #[cfg(target_arch = "x86_64")]
    fn supported_cpuid(&self) -> Result<Vec<x86_64::CpuidEntry>>;
}

/// Registers eventfds that raise an interrupt line when written (the KVM irqfd fast path).
pub trait IrqFd {
    /// Makes a write to `fd` raise `line`.
    fn register(&self, fd: &EventFd, line: u32) -> Result<()>;
}

/// One virtual machine.
pub trait Vm: Send + Sync {
    /// Maps host memory into the guest physical address space.
    ///
    /// # Safety
    ///
    /// `host_ptr` must point to a mapping of at least `len` bytes that stays valid (neither
    /// unmapped nor remapped) for as long as the VM exists, and that is not used as Rust-owned
    /// memory with aliasing guarantees (the guest writes it at any time).
    unsafe fn map_memory(
        &self,
        slot: u32,
        guest_addr: u64,
        host_ptr: *mut u8,
        len: u64,
        flags: MemoryFlags,
    ) -> Result<()>;

    /// Creates vCPU `id`. Call it on the thread that will run the vCPU.
    fn create_vcpu(&self, id: u8) -> Result<Box<dyn Vcpu>>;

    /// Raises an edge on interrupt `line` (an IOAPIC pin on x86, a GIC SPI number, counted
    /// from 0, on aarch64; the irqfd of [`Vm::irqfd`] takes the same numbers).
    fn inject_irq(&self, line: u32) -> Result<()>;

    /// Sends a message-signalled interrupt.
    fn signal_msi(&self, addr: u64, data: u32) -> Result<()>;

    /// The eventfd fast path, when the backend has one.
    fn irqfd(&self) -> Option<&dyn IrqFd>;

    /// Completes the VM once every vCPU exists, before any runs: on aarch64 KVM this
    /// initialises the in-kernel GIC (which must see all vCPUs); nothing to do on x86.
    fn vcpus_created(&self) -> Result<()>;

    /// Saves the interrupt controllers, the timer and the guest clock (vCPUs paused).
    /// [`HypervisorError::Unsupported`] where [`Capabilities::snapshots`] is false.
    fn save_state(&self) -> Result<x86_64::VmState>;

    /// Restores what [`Vm::save_state`] saved, before any vCPU runs. The guest clock moves on
    /// by the host time elapsed since the snapshot (see [`x86_64::ClockRestore`]).
    fn restore_state(&self, state: &x86_64::VmState) -> Result<x86_64::ClockRestore>;
}

/// Interrupts a running [`Vcpu`] from another thread: its `run` returns [`VmExit::Interrupted`]
/// promptly, even if the kick arrives just before the vCPU enters the guest.
pub trait VcpuKicker: Send + Sync {
    /// Makes the current or next `run` of the vCPU return [`VmExit::Interrupted`].
    fn kick(&self);
}

/// One virtual CPU. Created and run on one thread.
pub trait Vcpu {
    /// Runs the guest until an exit that the VMM must handle.
    fn run(&mut self) -> Result<VmExit<'_>>;

    /// A handle that interrupts this vCPU from another thread.
    fn kicker(&self) -> Box<dyn VcpuKicker>;

    /// General purpose registers.
    #[cfg(target_arch = "x86_64")]
    fn regs(&self) -> Result<x86_64::StandardRegisters>;
    /// Sets the general purpose registers.
    #[cfg(target_arch = "x86_64")]
    fn set_regs(&self, regs: &x86_64::StandardRegisters) -> Result<()>;
    /// Segment, control and descriptor-table registers.
    #[cfg(target_arch = "x86_64")]
    fn sregs(&self) -> Result<x86_64::SpecialRegisters>;
    /// Sets the segment, control and descriptor-table registers.
    #[cfg(target_arch = "x86_64")]
    fn set_sregs(&self, sregs: &x86_64::SpecialRegisters) -> Result<()>;
    /// Sets the x87/SSE control state.
    #[cfg(target_arch = "x86_64")]
    fn set_fpu(&self, fpu: &x86_64::FpuState) -> Result<()>;
    /// Writes model-specific registers.
    #[cfg(target_arch = "x86_64")]
    fn set_msrs(&self, msrs: &[x86_64::MsrEntry]) -> Result<()>;
    /// Sets the CPUID leaves the guest sees on this vCPU.
    #[cfg(target_arch = "x86_64")]
    fn set_cpuid(&self, entries: &[x86_64::CpuidEntry]) -> Result<()>;
    /// Programs the local APIC the way firmware does: LINT0 in ExtINT mode (the legacy PIC
    /// passes through) and LINT1 as NMI.
    #[cfg(target_arch = "x86_64")]
    fn setup_lapic(&self) -> Result<()>;

    /// Initialises the vCPU (KVM_ARM_VCPU_INIT with PSCI 0.2): call it once, first.
    #[cfg(target_arch = "aarch64")]
    fn init(&self, init: &aarch64::VcpuInit) -> Result<()>;
    /// Sets one core register.
    #[cfg(target_arch = "aarch64")]
    fn set_core_reg(&self, reg: aarch64::CoreReg, value: u64) -> Result<()>;

    /// Saves the whole vCPU state. Call it on the vCPU's thread while it is outside guest
    /// mode, after a `run` that returned [`VmExit::Interrupted`] (so no I/O is half done).
    /// [`HypervisorError::Unsupported`] where [`Capabilities::snapshots`] is false.
    fn save_state(&self) -> Result<x86_64::VcpuState>;

    /// Restores what [`Vcpu::save_state`] saved, CPUID included, before the first `run`.
    fn restore_state(&self, state: &x86_64::VcpuState) -> Result<()>;
}

/// The first usable backend on this host.
#[cfg(all(
    feature = "kvm",
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]
pub fn new() -> Result<Box<dyn Hypervisor>> {
    Ok(Box::new(kvm::KvmHypervisor::new()?))
}

/// The first usable backend on this host.
#[cfg(not(all(
    feature = "kvm",
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
)))]
pub fn new() -> Result<Box<dyn Hypervisor>> {
    Err(HypervisorError::NoBackend)
}
