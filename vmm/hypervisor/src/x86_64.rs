//! Portable x86_64 register state, shared by every backend.

/// General purpose registers, instruction pointer and flags.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct StandardRegisters {
    pub rax: u64,
    pub rbx: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub rsp: u64,
    pub rbp: u64,
    pub r8: u64,
    pub r9: u64,
    pub r10: u64,
    pub r11: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
    pub rip: u64,
    pub rflags: u64,
}

/// A segment register with its hidden descriptor cache.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Segment {
    /// Base address.
    pub base: u64,
    /// Limit, in bytes (already scaled by granularity).
    pub limit: u32,
    /// Selector.
    pub selector: u16,
    /// Type field (4 bits).
    pub type_: u8,
    /// Present.
    pub present: bool,
    /// Descriptor privilege level.
    pub dpl: u8,
    /// Default operation size (32-bit) flag.
    pub db: bool,
    /// Code/data (true) or system (false) segment.
    pub s: bool,
    /// 64-bit code segment.
    pub l: bool,
    /// Granularity: limit counted in 4 KiB units.
    pub g: bool,
    /// Available for software.
    pub avl: bool,
    /// Unusable (null) segment.
    pub unusable: bool,
}

impl Segment {
    /// Builds the hidden state from a GDT entry, the way the CPU loads it.
    pub fn from_gdt_entry(entry: u64, selector: u16) -> Self {
        let g = (entry >> 55) & 1 == 1;
        let raw_limit = ((entry & 0xffff) | (((entry >> 48) & 0xf) << 16)) as u32;
        let limit = if g {
            (raw_limit << 12) | 0xfff
        } else {
            raw_limit
        };
        let present = (entry >> 47) & 1 == 1;
        Segment {
            base: ((entry >> 16) & 0xff_ffff) | (((entry >> 56) & 0xff) << 24),
            limit,
            selector,
            type_: ((entry >> 40) & 0xf) as u8,
            present,
            dpl: ((entry >> 45) & 0x3) as u8,
            db: (entry >> 54) & 1 == 1,
            s: (entry >> 44) & 1 == 1,
            l: (entry >> 53) & 1 == 1,
            g,
            avl: (entry >> 52) & 1 == 1,
            unusable: !present,
        }
    }
}

/// A descriptor table register (GDTR, IDTR).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DescriptorTable {
    /// Linear base address.
    pub base: u64,
    /// Limit in bytes, minus one.
    pub limit: u16,
}

/// Segment, control and descriptor-table registers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct SpecialRegisters {
    pub cs: Segment,
    pub ds: Segment,
    pub es: Segment,
    pub fs: Segment,
    pub gs: Segment,
    pub ss: Segment,
    pub tr: Segment,
    pub ldt: Segment,
    pub gdt: DescriptorTable,
    pub idt: DescriptorTable,
    pub cr0: u64,
    pub cr2: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub cr8: u64,
    pub efer: u64,
    pub apic_base: u64,
}

/// x87 and SSE control state set at boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FpuState {
    /// x87 control word.
    pub fcw: u16,
    /// SSE control and status.
    pub mxcsr: u32,
}

impl Default for FpuState {
    /// The state after `FNINIT` and reset: all exceptions masked.
    fn default() -> Self {
        FpuState {
            fcw: 0x37f,
            mxcsr: 0x1f80,
        }
    }
}

/// One model-specific register value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsrEntry {
    /// MSR index.
    pub index: u32,
    /// Value.
    pub data: u64,
}

/// One CPUID leaf (and sub-leaf) as the guest sees it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuidEntry {
    /// Leaf (EAX input).
    pub function: u32,
    /// Sub-leaf (ECX input), meaningful when `flags` has [`CpuidEntry::FLAG_INDEXED`].
    pub index: u32,
    /// Backend flags ([`CpuidEntry::FLAG_INDEXED`]).
    pub flags: u32,
    /// Output EAX.
    pub eax: u32,
    /// Output EBX.
    pub ebx: u32,
    /// Output ECX.
    pub ecx: u32,
    /// Output EDX.
    pub edx: u32,
}

impl CpuidEntry {
    /// The leaf depends on the sub-leaf in ECX.
    pub const FLAG_INDEXED: u32 = 1;
}

/// A vCPU's complete state, saved while it is outside guest mode, for a snapshot. The register
/// blocks are laid out as the backend that saved them defines them ([`VcpuState::backend`]): a
/// state is restored only by the same backend.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VcpuState {
    /// The backend that saved the state (`kvm`).
    pub backend: String,
    /// Model-specific registers, in the order they are restored (the TSC before the
    /// TSC-deadline timer).
    pub msrs: Vec<MsrEntry>,
    /// The CPUID the vCPU showed.
    pub cpuid: Vec<CpuidEntry>,
    /// The guest TSC frequency, kHz, when the backend knows it.
    pub tsc_khz: Option<u32>,
    /// Register blocks by name (`regs`, `sregs`, `xsave`, `lapic`, ...), backend layout.
    pub blocks: Vec<(String, Vec<u8>)>,
}

/// The guest's paravirtual clock (KVM's kvmclock) at a snapshot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClockState {
    /// The guest clock, nanoseconds.
    pub guest_ns: u64,
    /// Backend flags of the reading.
    pub flags: u32,
    /// The host's `CLOCK_REALTIME` at the same instant, nanoseconds since the epoch.
    pub host_realtime_ns: u64,
}

/// VM-wide state (interrupt controllers, timer, clock), saved with the vCPUs paused.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VmState {
    /// The backend that saved the state (`kvm`).
    pub backend: String,
    /// The guest clock.
    pub clock: ClockState,
    /// Device blocks by name (`pic_master`, `pic_slave`, `ioapic`, `pit`), backend layout.
    pub blocks: Vec<(String, Vec<u8>)>,
}

/// How the guest clock was set on a restore.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClockRestore {
    /// Nanoseconds the guest clock was moved past the saved reading: the host time that went
    /// by since the snapshot.
    pub advanced_ns: u64,
    /// Whether the hypervisor did the advance itself (KVM's `KVM_CLOCK_REALTIME`) rather than
    /// the VMM from its own reading of the host clock.
    pub by_hypervisor: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_segment_from_gdt_entry_64bit_code() {
        let s = Segment::from_gdt_entry(0x00af_9b00_0000_ffff, 0x8);
        assert!(s.l && s.present && s.s && s.g && !s.db);
        assert_eq!(s.type_, 0xb);
        assert_eq!(s.limit, 0xffff_ffff);
        assert_eq!(s.base, 0);
    }

    #[test]
    fn test_segment_from_gdt_entry_tss() {
        let s = Segment::from_gdt_entry(0x0080_8b00_0000_ffff, 0x18);
        assert!(!s.s && s.present);
        assert_eq!(s.type_, 0xb);
    }
}
