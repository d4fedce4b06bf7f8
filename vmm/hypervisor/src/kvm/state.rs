//! Saving and restoring KVM vCPU and VM state for snapshots, in Firecracker's order.
//!
//! Register blocks are kept as the bytes of their `kvm_bindings` structures (the structures
//! have no implicit padding: `kvm_bindings` derives zerocopy's `IntoBytes` on them), so a state
//! is only meaningful to this backend; each block is checked for its exact size on restore.
//!
//! The guest clock: KVM_GET_CLOCK reads kvmclock together with the host's `CLOCK_REALTIME`
//! when the host clocksource allows it (flag `KVM_CLOCK_REALTIME`). Firecracker saves the
//! reading as KVM returns it, clearing only `KVM_CLOCK_TSC_STABLE` (which KVM_SET_CLOCK
//! refuses), and restores it as is: with `KVM_CLOCK_REALTIME` set, KVM itself moves kvmclock
//! on by the host realtime that elapsed since the reading, so the guest's monotonic and wall
//! clocks are right after a restore however long the snapshot sat on disk. Where the host
//! gives no realtime (a non-TSC host clocksource), the VMM does the same sum from its own
//! reading of `CLOCK_REALTIME` taken at the snapshot.

use kvm_bindings::{
    kvm_clock_data, kvm_debugregs, kvm_irqchip, kvm_lapic_state, kvm_mp_state, kvm_msr_entry,
    kvm_pit_state2, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave, CpuId, Msrs,
    KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, KVM_MAX_CPUID_ENTRIES,
};
use kvm_ioctls::{VcpuFd, VmFd};
use vmm_sys_util::{ioctl_io_nr, ioctl_ior_nr, ioctl_iowr_nr};

use crate::x86_64::{ClockRestore, ClockState, CpuidEntry, MsrEntry, VcpuState, VmState};
use crate::{HypervisorError, Result};

ioctl_ior_nr!(KVM_GET_REGS, kvm_bindings::KVMIO, 0x81, kvm_regs);
ioctl_ior_nr!(KVM_GET_SREGS, kvm_bindings::KVMIO, 0x83, kvm_sregs);
ioctl_iowr_nr!(
    KVM_GET_MSRS,
    kvm_bindings::KVMIO,
    0x88,
    kvm_bindings::kvm_msrs
);
ioctl_iowr_nr!(
    KVM_GET_CPUID2,
    kvm_bindings::KVMIO,
    0x91,
    kvm_bindings::kvm_cpuid2
);
ioctl_ior_nr!(KVM_GET_LAPIC, kvm_bindings::KVMIO, 0x8e, kvm_lapic_state);
ioctl_ior_nr!(KVM_GET_MP_STATE, kvm_bindings::KVMIO, 0x98, kvm_mp_state);
ioctl_ior_nr!(
    KVM_GET_VCPU_EVENTS,
    kvm_bindings::KVMIO,
    0x9f,
    kvm_vcpu_events
);
ioctl_ior_nr!(KVM_GET_DEBUGREGS, kvm_bindings::KVMIO, 0xa1, kvm_debugregs);
ioctl_ior_nr!(KVM_GET_XSAVE, kvm_bindings::KVMIO, 0xa4, kvm_xsave);
ioctl_ior_nr!(KVM_GET_XCRS, kvm_bindings::KVMIO, 0xa6, kvm_xcrs);
ioctl_io_nr!(KVM_GET_TSC_KHZ, kvm_bindings::KVMIO, 0xa3);
ioctl_ior_nr!(KVM_GET_CLOCK, kvm_bindings::KVMIO, 0x7c, kvm_clock_data);
ioctl_iowr_nr!(KVM_GET_IRQCHIP, kvm_bindings::KVMIO, 0x62, kvm_irqchip);
ioctl_ior_nr!(KVM_GET_PIT2, kvm_bindings::KVMIO, 0x9f, kvm_pit_state2);

/// The `ioctl` requests [`Vcpu::save_state`](crate::Vcpu::save_state) makes, for a vCPU
/// thread's seccomp filter.
pub fn vcpu_save_ioctls() -> Vec<u64> {
    [
        KVM_GET_MP_STATE(),
        KVM_GET_REGS(),
        KVM_GET_SREGS(),
        KVM_GET_XSAVE(),
        KVM_GET_XCRS(),
        KVM_GET_DEBUGREGS(),
        KVM_GET_LAPIC(),
        KVM_GET_TSC_KHZ(),
        KVM_GET_CPUID2(),
        KVM_GET_MSRS(),
        KVM_GET_VCPU_EVENTS(),
    ]
    .to_vec()
}

/// The `ioctl` requests [`Vm::save_state`](crate::Vm::save_state) makes.
pub fn vm_save_ioctls() -> Vec<u64> {
    vec![KVM_GET_PIT2(), KVM_GET_CLOCK(), KVM_GET_IRQCHIP()]
}

/// The backend name recorded in saved states.
pub const BACKEND: &str = "kvm";
/// `KVM_CLOCK_TSC_STABLE`: reported by KVM_GET_CLOCK, refused by KVM_SET_CLOCK.
const KVM_CLOCK_TSC_STABLE: u32 = 2;
/// `KVM_CLOCK_REALTIME`: the reading carries the host's realtime.
const KVM_CLOCK_REALTIME: u32 = 1 << 2;
/// `KVM_CLOCK_HOST_TSC`: the reading carries the host TSC.
const KVM_CLOCK_HOST_TSC: u32 = 1 << 3;
/// `MSR_IA32_TSC`.
const MSR_IA32_TSC: u32 = 0x10;
/// `MSR_IA32_TSC_DEADLINE`: restored after the TSC, which its value is relative to.
const MSR_IA32_TSC_DEADLINE: u32 = 0x6e0;
/// `MSR_IA32_MCG_CTL`: listed by KVM but refused when the vCPU has no MCG_CTL_P
/// (Firecracker leaves it out too).
const MSR_IA32_MCG_CTL: u32 = 0x17b;

/// KVM structures that are plain data: `repr(C)`, integers and arrays or unions of integers
/// without implicit padding, valid for every bit pattern.
///
/// # Safety
///
/// Implement only for such types.
unsafe trait Pod: Default {}

// SAFETY: each is a bindgen `repr(C)` structure of integers (and arrays and unions of them)
// with explicit padding fields; kvm-bindings derives zerocopy's `IntoBytes` and `FromBytes`
// for every one of them (its `serde` feature), which proves there is no implicit padding and
// that any bit pattern is valid.
unsafe impl Pod for kvm_regs {}
// SAFETY: as above.
unsafe impl Pod for kvm_sregs {}
// SAFETY: as above.
unsafe impl Pod for kvm_lapic_state {}
// SAFETY: as above.
unsafe impl Pod for kvm_xsave {}
// SAFETY: as above.
unsafe impl Pod for kvm_xcrs {}
// SAFETY: as above.
unsafe impl Pod for kvm_debugregs {}
// SAFETY: as above.
unsafe impl Pod for kvm_vcpu_events {}
// SAFETY: as above.
unsafe impl Pod for kvm_mp_state {}
// SAFETY: as above.
unsafe impl Pod for kvm_pit_state2 {}
// SAFETY: as above (kvm-bindings implements `IntoBytes` for its unions by hand, stating the
// same reasoning: every byte of the union is initialised data).
unsafe impl Pod for kvm_irqchip {}

fn to_bytes<T: Pod>(value: &T) -> Vec<u8> {
    let len = std::mem::size_of::<T>();
    // SAFETY: `value` is a valid `T` of `len` bytes, all of them initialised (`Pod`: no
    // implicit padding); the slice lives only for the copy.
    unsafe { std::slice::from_raw_parts((value as *const T).cast::<u8>(), len) }.to_vec()
}

fn from_bytes<T: Pod>(name: &str, bytes: &[u8]) -> Result<T> {
    let len = std::mem::size_of::<T>();
    if bytes.len() != len {
        return Err(HypervisorError::StateMismatch(format!(
            "block {name} is {} bytes, {BACKEND} expects {len}",
            bytes.len()
        )));
    }
    let mut value = T::default();
    // SAFETY: `value` is a `T` of `len` bytes that we own; `bytes` has exactly `len` bytes and
    // does not overlap it; any bit pattern is a valid `T` (`Pod`).
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), (&mut value as *mut T).cast::<u8>(), len)
    };
    Ok(value)
}

fn block<'a>(blocks: &'a [(String, Vec<u8>)], name: &str) -> Result<&'a [u8]> {
    blocks
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, b)| b.as_slice())
        .ok_or_else(|| HypervisorError::StateMismatch(format!("block {name} is missing")))
}

fn check_backend(backend: &str) -> Result<()> {
    if backend == BACKEND {
        Ok(())
    } else {
        Err(HypervisorError::StateMismatch(format!(
            "saved by the {backend:?} backend, this is {BACKEND:?}"
        )))
    }
}

fn vcpu_err(op: &'static str) -> impl Fn(kvm_ioctls::Error) -> HypervisorError {
    move |e| HypervisorError::VcpuState {
        op,
        source: e.into(),
    }
}

fn vm_err(op: &'static str) -> impl Fn(kvm_ioctls::Error) -> HypervisorError {
    move |e| HypervisorError::VmState {
        op,
        source: e.into(),
    }
}

/// The MSRs to save, from KVM's list: the TSC-deadline timer after the TSC.
pub(super) fn msrs_to_save(index_list: &[u32]) -> Vec<u32> {
    let mut list: Vec<u32> = index_list
        .iter()
        .copied()
        .filter(|&i| i != MSR_IA32_MCG_CTL)
        .collect();
    list.sort_by_key(|&i| match i {
        MSR_IA32_TSC => 0,
        MSR_IA32_TSC_DEADLINE => 2,
        _ => 1,
    });
    list
}

/// Reads the MSRs of `indexes`; one KVM refuses to read is left out (KVM lists MSRs that a
/// given vCPU model may not have).
fn get_msrs(fd: &VcpuFd, indexes: &[u32]) -> Result<Vec<MsrEntry>> {
    let mut out = Vec::with_capacity(indexes.len());
    let mut rest = indexes;
    while !rest.is_empty() {
        let chunk: Vec<kvm_msr_entry> = rest
            .iter()
            .take(255)
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut msrs = Msrs::from_entries(&chunk).map_err(|_| HypervisorError::VcpuState {
            op: "get_msrs",
            source: std::io::Error::from_raw_os_error(libc::E2BIG),
        })?;
        let read = fd.get_msrs(&mut msrs).map_err(vcpu_err("get_msrs"))?;
        out.extend(msrs.as_slice()[..read].iter().map(|e| MsrEntry {
            index: e.index,
            data: e.data,
        }));
        // Skip the one KVM refused (if any) and go on after it.
        let skip = if read < chunk.len() { read + 1 } else { read };
        rest = &rest[skip.min(rest.len())..];
    }
    Ok(out)
}

/// Saves a vCPU (Firecracker's order of reads).
pub(super) fn save_vcpu(fd: &VcpuFd, msr_list: &[u32]) -> Result<VcpuState> {
    let mp_state = fd.get_mp_state().map_err(vcpu_err("get_mp_state"))?;
    let regs = fd.get_regs().map_err(vcpu_err("get_regs"))?;
    let sregs = fd.get_sregs().map_err(vcpu_err("get_sregs"))?;
    let xsave = fd.get_xsave().map_err(vcpu_err("get_xsave"))?;
    let xcrs = fd.get_xcrs().map_err(vcpu_err("get_xcrs"))?;
    let debugregs = fd.get_debug_regs().map_err(vcpu_err("get_debug_regs"))?;
    let lapic = fd.get_lapic().map_err(vcpu_err("get_lapic"))?;
    let tsc_khz = fd.get_tsc_khz().ok();
    let cpuid = fd
        .get_cpuid2(KVM_MAX_CPUID_ENTRIES)
        .map_err(vcpu_err("get_cpuid2"))?;
    let msrs = get_msrs(fd, msr_list)?;
    let events = fd.get_vcpu_events().map_err(vcpu_err("get_vcpu_events"))?;
    Ok(VcpuState {
        backend: BACKEND.to_string(),
        msrs,
        cpuid: cpuid
            .as_slice()
            .iter()
            .map(|e| CpuidEntry {
                function: e.function,
                index: e.index,
                flags: e.flags,
                eax: e.eax,
                ebx: e.ebx,
                ecx: e.ecx,
                edx: e.edx,
            })
            .collect(),
        tsc_khz,
        blocks: vec![
            ("mp_state".into(), to_bytes(&mp_state)),
            ("regs".into(), to_bytes(&regs)),
            ("sregs".into(), to_bytes(&sregs)),
            ("xsave".into(), to_bytes(&xsave)),
            ("xcrs".into(), to_bytes(&xcrs)),
            ("debugregs".into(), to_bytes(&debugregs)),
            ("lapic".into(), to_bytes(&lapic)),
            ("events".into(), to_bytes(&events)),
        ],
    })
}

/// Restores a vCPU (Firecracker's order of writes: CPUID first, events last).
pub(super) fn restore_vcpu(fd: &VcpuFd, state: &VcpuState) -> Result<()> {
    check_backend(&state.backend)?;
    let b = &state.blocks;
    let mp_state: kvm_mp_state = from_bytes("mp_state", block(b, "mp_state")?)?;
    let regs: kvm_regs = from_bytes("regs", block(b, "regs")?)?;
    let sregs: kvm_sregs = from_bytes("sregs", block(b, "sregs")?)?;
    let xsave: kvm_xsave = from_bytes("xsave", block(b, "xsave")?)?;
    let xcrs: kvm_xcrs = from_bytes("xcrs", block(b, "xcrs")?)?;
    let debugregs: kvm_debugregs = from_bytes("debugregs", block(b, "debugregs")?)?;
    let lapic: kvm_lapic_state = from_bytes("lapic", block(b, "lapic")?)?;
    let events: kvm_vcpu_events = from_bytes("events", block(b, "events")?)?;

    let entries: Vec<kvm_bindings::kvm_cpuid_entry2> = state
        .cpuid
        .iter()
        .map(|e| kvm_bindings::kvm_cpuid_entry2 {
            function: e.function,
            index: e.index,
            flags: e.flags,
            eax: e.eax,
            ebx: e.ebx,
            ecx: e.ecx,
            edx: e.edx,
            ..Default::default()
        })
        .collect();
    let cpuid = CpuId::from_entries(&entries).map_err(|_| HypervisorError::VcpuState {
        op: "set_cpuid",
        source: std::io::Error::from_raw_os_error(libc::E2BIG),
    })?;
    if let Some(khz) = state.tsc_khz {
        // Only when it differs: setting the frequency needs KVM_CAP_TSC_CONTROL.
        if fd.get_tsc_khz().ok() != Some(khz) {
            fd.set_tsc_khz(khz).map_err(vcpu_err("set_tsc_khz"))?;
        }
    }
    fd.set_cpuid2(&cpuid).map_err(vcpu_err("set_cpuid"))?;
    fd.set_mp_state(mp_state)
        .map_err(vcpu_err("set_mp_state"))?;
    fd.set_regs(&regs).map_err(vcpu_err("set_regs"))?;
    fd.set_sregs(&sregs).map_err(vcpu_err("set_sregs"))?;
    // SAFETY: `xsave` is the legacy 4 KiB structure read by KVM_GET_XSAVE from a vCPU of the
    // same backend; KVM_SET_XSAVE reads exactly that size.
    unsafe { fd.set_xsave(&xsave) }.map_err(vcpu_err("set_xsave"))?;
    fd.set_xcrs(&xcrs).map_err(vcpu_err("set_xcrs"))?;
    fd.set_debug_regs(&debugregs)
        .map_err(vcpu_err("set_debug_regs"))?;
    fd.set_lapic(&lapic).map_err(vcpu_err("set_lapic"))?;
    set_msrs(fd, &state.msrs)?;
    fd.set_vcpu_events(&events)
        .map_err(vcpu_err("set_vcpu_events"))?;
    Ok(())
}

/// Writes the saved MSRs; one KVM refuses is reported and skipped (the same host listed it).
fn set_msrs(fd: &VcpuFd, msrs: &[MsrEntry]) -> Result<()> {
    let mut rest = msrs;
    while !rest.is_empty() {
        let chunk: Vec<kvm_msr_entry> = rest
            .iter()
            .take(255)
            .map(|m| kvm_msr_entry {
                index: m.index,
                data: m.data,
                ..Default::default()
            })
            .collect();
        let kvm_msrs = Msrs::from_entries(&chunk).map_err(|_| HypervisorError::VcpuState {
            op: "set_msrs",
            source: std::io::Error::from_raw_os_error(libc::E2BIG),
        })?;
        let written = fd.set_msrs(&kvm_msrs).map_err(vcpu_err("set_msrs"))?;
        let skip = if written < chunk.len() {
            let refused = chunk[written].index;
            if refused == MSR_IA32_TSC {
                return Err(HypervisorError::VcpuState {
                    op: "set_msrs",
                    source: std::io::Error::other("the TSC msr was refused"),
                });
            }
            written + 1
        } else {
            written
        };
        rest = &rest[skip.min(rest.len())..];
    }
    Ok(())
}

fn host_realtime_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn irqchip(fd: &VmFd, chip_id: u32, op: &'static str) -> Result<kvm_irqchip> {
    let mut chip = kvm_irqchip {
        chip_id,
        ..Default::default()
    };
    fd.get_irqchip(&mut chip).map_err(vm_err(op))?;
    Ok(chip)
}

/// Saves the PIT, the clock and the interrupt controllers.
pub(super) fn save_vm(fd: &VmFd) -> Result<VmState> {
    let pit = fd.get_pit2().map_err(vm_err("get_pit2"))?;
    let clock = fd.get_clock().map_err(vm_err("get_clock"))?;
    let our_realtime = host_realtime_ns();
    let pic_master = irqchip(fd, KVM_IRQCHIP_PIC_MASTER, "get_irqchip (pic master)")?;
    let pic_slave = irqchip(fd, KVM_IRQCHIP_PIC_SLAVE, "get_irqchip (pic slave)")?;
    let ioapic = irqchip(fd, KVM_IRQCHIP_IOAPIC, "get_irqchip (ioapic)")?;
    let by_kvm = clock.flags & KVM_CLOCK_REALTIME != 0;
    Ok(VmState {
        backend: BACKEND.to_string(),
        clock: ClockState {
            guest_ns: clock.clock,
            // Refused by KVM_SET_CLOCK (Firecracker clears it too).
            flags: clock.flags & !KVM_CLOCK_TSC_STABLE,
            host_realtime_ns: if by_kvm { clock.realtime } else { our_realtime },
        },
        blocks: vec![
            ("pit".into(), to_bytes(&pit)),
            ("pic_master".into(), to_bytes(&pic_master)),
            ("pic_slave".into(), to_bytes(&pic_slave)),
            ("ioapic".into(), to_bytes(&ioapic)),
        ],
    })
}

/// Restores the PIT, the clock (moved on by the elapsed host time) and the interrupt
/// controllers (Firecracker's order).
pub(super) fn restore_vm(fd: &VmFd, state: &VmState) -> Result<ClockRestore> {
    check_backend(&state.backend)?;
    let b = &state.blocks;
    let pit: kvm_pit_state2 = from_bytes("pit", block(b, "pit")?)?;
    let pic_master: kvm_irqchip = from_bytes("pic_master", block(b, "pic_master")?)?;
    let pic_slave: kvm_irqchip = from_bytes("pic_slave", block(b, "pic_slave")?)?;
    let ioapic: kvm_irqchip = from_bytes("ioapic", block(b, "ioapic")?)?;
    fd.set_pit2(&pit).map_err(vm_err("set_pit2"))?;
    let by_kvm = state.clock.flags & KVM_CLOCK_REALTIME != 0;
    let elapsed = host_realtime_ns().saturating_sub(state.clock.host_realtime_ns);
    let clock = if by_kvm {
        // KVM adds the realtime elapsed since `realtime` to `clock`.
        kvm_clock_data {
            clock: state.clock.guest_ns,
            flags: KVM_CLOCK_REALTIME,
            realtime: state.clock.host_realtime_ns,
            ..Default::default()
        }
    } else {
        kvm_clock_data {
            clock: state.clock.guest_ns.saturating_add(elapsed),
            flags: state.clock.flags & !(KVM_CLOCK_REALTIME | KVM_CLOCK_HOST_TSC),
            ..Default::default()
        }
    };
    fd.set_clock(&clock).map_err(vm_err("set_clock"))?;
    fd.set_irqchip(&pic_master)
        .map_err(vm_err("set_irqchip (pic master)"))?;
    fd.set_irqchip(&pic_slave)
        .map_err(vm_err("set_irqchip (pic slave)"))?;
    fd.set_irqchip(&ioapic)
        .map_err(vm_err("set_irqchip (ioapic)"))?;
    Ok(ClockRestore {
        advanced_ns: elapsed,
        by_hypervisor: by_kvm,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_save_ioctl_numbers() {
        // linux/kvm.h, x86_64.
        assert!(vcpu_save_ioctls().contains(&0x8090_ae81)); // KVM_GET_REGS
        assert!(vcpu_save_ioctls().contains(&0x9000_aea4)); // KVM_GET_XSAVE
        assert!(vcpu_save_ioctls().contains(&0xc008_ae88)); // KVM_GET_MSRS
        assert_eq!(
            vm_save_ioctls(),
            vec![0x8070_ae9f, 0x8030_ae7c, 0xc208_ae62]
        );
    }

    #[test]
    fn test_msrs_to_save_puts_tsc_first_and_deadline_last() {
        let list = msrs_to_save(&[0x6e0, 0x174, MSR_IA32_MCG_CTL, 0x10, 0xc000_0080]);
        assert_eq!(list, vec![0x10, 0x174, 0xc000_0080, 0x6e0]);
    }

    #[test]
    fn test_blocks_round_trip_and_refuse_wrong_sizes() {
        let regs = kvm_regs {
            rip: 0x1234,
            rflags: 2,
            ..Default::default()
        };
        let bytes = to_bytes(&regs);
        assert_eq!(bytes.len(), std::mem::size_of::<kvm_regs>());
        let back: kvm_regs = from_bytes("regs", &bytes).unwrap();
        assert_eq!(back.rip, 0x1234);
        let e = from_bytes::<kvm_regs>("regs", &bytes[1..]).unwrap_err();
        assert!(e.to_string().contains("block regs is"), "{e}");
        assert!(check_backend("hvf").is_err());
    }
}
