//! A KVM vCPU, its register accessors and its kicker.
//!
//! Kicking: each vCPU thread records a pointer to its `kvm_run` area in a thread-local. The
//! kicker sends a real-time signal to the thread; the handler sets `kvm_run.immediate_exit`.
//! A kick that lands before `KVM_RUN` makes it return `EINTR` at once, one that lands during it
//! interrupts the guest, so no kick is lost.
//!
//! Why a kick is sound whatever the threads do: the kicker names the vCPU thread by its kernel
//! thread id and signals it with `tgkill(2)`, which takes two integers and reads no memory of
//! the target thread (unlike `pthread_kill`, whose `pthread_t` points into the thread's
//! descriptor, freed once a detached thread exits: using a stale one is undefined behaviour).
//! The thread id is shared with the vCPU under a mutex: [`KvmVcpu`]'s `Drop`, which runs on the
//! vCPU thread (the type is not `Send`) before that thread can exit, clears it, and a kick holds
//! the mutex across the syscall, so a kick never targets a thread that has exited. Should a
//! vCPU be leaked (`mem::forget`) and its thread exit, the id may be stale: `tgkill` then fails
//! with `ESRCH`, or, if the kernel reused the id for another thread of this process, delivers
//! the kick there, where the handler finds no `kvm_run` and does nothing (it is installed with
//! `SA_RESTART`, so that thread's system calls resume as if nothing happened).

use std::cell::Cell;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex, Once};

use kvm_bindings::{
    kvm_cpuid_entry2, kvm_dtable, kvm_fpu, kvm_msr_entry, kvm_regs, kvm_run, kvm_segment,
    kvm_sregs, CpuId, Msrs,
};
use kvm_ioctls::{VcpuExit, VcpuFd};
use vmm_sys_util::signal::SIGRTMIN;

use crate::x86_64::{
    CpuidEntry, DescriptorTable, FpuState, MsrEntry, Segment, SpecialRegisters, StandardRegisters,
};
use crate::{HypervisorError, Result, Vcpu, VcpuKicker, VmExit};

/// Offset of the LVT LINT0 register in the local APIC page.
const APIC_LVT0: usize = 0x350;
/// Offset of the LVT LINT1 register in the local APIC page.
const APIC_LVT1: usize = 0x360;
/// LVT delivery mode ExtINT.
const APIC_MODE_EXTINT: u32 = 0x7;
/// LVT delivery mode NMI.
const APIC_MODE_NMI: u32 = 0x4;

thread_local! {
    /// The `kvm_run` area of the vCPU this thread runs, or null.
    static KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

static KICK_HANDLER: Once = Once::new();

/// The kick signal: the first real-time signal, which nothing else in the VMM uses.
pub fn kick_signal() -> libc::c_int {
    SIGRTMIN()
}

extern "C" fn handle_kick(_num: libc::c_int, _info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // `try_with` cannot allocate or panic: the thread-local has a const initializer.
    let _ = KVM_RUN.try_with(|run| {
        let run = run.get();
        if !run.is_null() {
            // SAFETY: a non-null pointer is only stored by `KvmVcpu::new` on this very thread and
            // cleared by its `Drop` before the `kvm_run` mapping goes away, so it points to the
            // live mapping. Writing one byte is async-signal-safe.
            unsafe { std::ptr::write_volatile(&raw mut (*run).immediate_exit, 1) };
        }
    });
}

fn install_kick_handler() {
    KICK_HANDLER.call_once(|| {
        // SAFETY: `sigaction` is plain data; all zeroes is a valid (empty) value of it.
        let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
        action.sa_sigaction = handle_kick as *const () as usize;
        // SA_RESTART: a kick that lands outside KVM_RUN (a vCPU thread waiting on a lock, or a
        // stale id reused by another thread, see the module doc) does not make that thread's
        // system calls fail with EINTR. KVM_RUN itself is never restarted: it returns EINTR.
        action.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
        // SAFETY: `action.sa_mask` is a valid `sigset_t` owned by this frame.
        unsafe { libc::sigemptyset(&mut action.sa_mask) };
        // SAFETY: `action` is a fully initialised `sigaction` whose handler is an
        // `extern "C"` function with the SA_SIGINFO signature, async-signal-safe (one volatile
        // store through a const thread-local); the old action is not asked for.
        let rc = unsafe { libc::sigaction(kick_signal(), &action, std::ptr::null_mut()) };
        if rc != 0 {
            // Without the handler a kick would kill the process; nothing else can be done here.
            panic!(
                "cannot install the vcpu kick signal handler: {}",
                std::io::Error::last_os_error()
            );
        }
    });
}

/// Where a kick goes: the vCPU thread's kernel id while the vCPU exists, `None` after.
struct KickTarget {
    tgid: libc::pid_t,
    tid: Mutex<Option<libc::pid_t>>,
}

/// A vCPU backed by a KVM vCPU file descriptor. Not `Send`: it stays on its creating thread.
pub struct KvmVcpu {
    fd: VcpuFd,
    /// The `kvm_run` mapping owned by `fd`.
    run_area: *mut kvm_run,
    target: Arc<KickTarget>,
    /// The MSRs [`Vcpu::save_state`] saves.
    msrs_to_save: Arc<Vec<u32>>,
    _not_send: PhantomData<*const ()>,
}

impl KvmVcpu {
    pub(super) fn new(mut fd: VcpuFd, msrs_to_save: Arc<Vec<u32>>) -> Self {
        install_kick_handler();
        let run: *mut kvm_run = fd.get_kvm_run();
        KVM_RUN.with(|p| p.set(run));
        // SAFETY: gettid and getpid have no preconditions and touch no memory of ours.
        let (tgid, tid) = unsafe { (libc::getpid(), libc::gettid()) };
        KvmVcpu {
            fd,
            run_area: run,
            target: Arc::new(KickTarget {
                tgid,
                tid: Mutex::new(Some(tid)),
            }),
            msrs_to_save,
            _not_send: PhantomData,
        }
    }

    fn state_err(op: &'static str) -> impl Fn(kvm_ioctls::Error) -> HypervisorError {
        move |e| HypervisorError::VcpuState {
            op,
            source: e.into(),
        }
    }
}

impl Drop for KvmVcpu {
    fn drop(&mut self) {
        // Waits for a kick in progress; none targets this thread afterwards.
        *self.target.tid.lock().unwrap_or_else(|p| p.into_inner()) = None;
        let run = self.run_area;
        let _ = KVM_RUN.try_with(|p| {
            if p.get() == run {
                p.set(std::ptr::null_mut());
            }
        });
    }
}

/// Interrupts a [`KvmVcpu`] by signalling its thread (see the module doc for why it is sound).
pub struct KvmVcpuKicker {
    target: Arc<KickTarget>,
}

impl KvmVcpuKicker {
    /// Signals the vCPU thread; false when the vCPU is gone or the signal could not be sent.
    pub fn kick_thread(&self) -> bool {
        let tid = self.target.tid.lock().unwrap_or_else(|p| p.into_inner());
        match *tid {
            // SAFETY: tgkill takes integers and reads no memory; a stale id cannot cause harm
            // (module doc). The lock is held across the call, so the vCPU is not dropped (and
            // its thread cannot exit) meanwhile.
            // (The raw system call: musl's libc has no tgkill wrapper.)
            Some(tid) => unsafe {
                libc::syscall(
                    libc::SYS_tgkill,
                    libc::c_long::from(self.target.tgid),
                    libc::c_long::from(tid),
                    libc::c_long::from(kick_signal()),
                ) == 0
            },
            None => false,
        }
    }
}

impl VcpuKicker for KvmVcpuKicker {
    fn kick(&self) {
        // A failed kick means the vCPU is gone: nothing to interrupt.
        let _ = self.kick_thread();
    }
}

fn segment_to_kvm(s: &Segment) -> kvm_segment {
    kvm_segment {
        base: s.base,
        limit: s.limit,
        selector: s.selector,
        type_: s.type_,
        present: s.present.into(),
        dpl: s.dpl,
        db: s.db.into(),
        s: s.s.into(),
        l: s.l.into(),
        g: s.g.into(),
        avl: s.avl.into(),
        unusable: s.unusable.into(),
        padding: 0,
    }
}

fn segment_from_kvm(s: &kvm_segment) -> Segment {
    Segment {
        base: s.base,
        limit: s.limit,
        selector: s.selector,
        type_: s.type_,
        present: s.present != 0,
        dpl: s.dpl,
        db: s.db != 0,
        s: s.s != 0,
        l: s.l != 0,
        g: s.g != 0,
        avl: s.avl != 0,
        unusable: s.unusable != 0,
    }
}

fn dtable_to_kvm(t: &DescriptorTable) -> kvm_dtable {
    kvm_dtable {
        base: t.base,
        limit: t.limit,
        padding: [0; 3],
    }
}

fn lapic_reg(regs: &[libc::c_char], offset: usize) -> u32 {
    let b = |i: usize| regs[offset + i] as u8;
    u32::from_le_bytes([b(0), b(1), b(2), b(3)])
}

fn set_lapic_reg(regs: &mut [libc::c_char], offset: usize, value: u32) {
    for (i, byte) in value.to_le_bytes().iter().enumerate() {
        regs[offset + i] = *byte as libc::c_char;
    }
}

/// `KVM_EXIT_INTERNAL_ERROR` in words: the suberror (linux/kvm.h `KVM_INTERNAL_ERROR_*`) and
/// the data words KVM attached (for an emulation failure: the instruction bytes, for a
/// delivery event: the exit reason and vectoring information).
fn describe_internal_error(suberror: u32, data: &[u64]) -> String {
    let kind = match suberror {
        1 => "emulation failure",
        2 => "simultaneous #PF while delivering an event",
        3 => "delivery event",
        4 => "unexpected exit reason",
        _ => "unknown suberror",
    };
    let data: Vec<String> = data.iter().map(|d| format!("{d:#x}")).collect();
    format!(
        "kvm internal error: {kind} (suberror {suberror}), data [{}]",
        data.join(", ")
    )
}

/// An LVT value with the delivery mode (bits 8..11) replaced.
fn with_delivery_mode(lvt: u32, mode: u32) -> u32 {
    (lvt & !0x700) | (mode << 8)
}

impl Vcpu for KvmVcpu {
    fn run(&mut self) -> Result<VmExit<'_>> {
        match self.fd.run() {
            Ok(exit) => Ok(match exit {
                VcpuExit::IoIn(port, data) => VmExit::IoIn { port, data },
                VcpuExit::IoOut(port, data) => VmExit::IoOut { port, data },
                VcpuExit::MmioRead(addr, data) => VmExit::MmioRead { addr, data },
                VcpuExit::MmioWrite(addr, data) => VmExit::MmioWrite { addr, data },
                VcpuExit::Hlt => VmExit::Halt,
                VcpuExit::Shutdown => VmExit::Shutdown,
                VcpuExit::Intr => VmExit::Interrupted,
                VcpuExit::SystemEvent(kind, _) => match kind {
                    kvm_bindings::KVM_SYSTEM_EVENT_RESET => VmExit::Reset,
                    kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN => VmExit::Shutdown,
                    other => VmExit::Unhandled(format!("system event {other}")),
                },
                VcpuExit::FailEntry(reason, cpu) => VmExit::Unhandled(format!(
                    "entry failed: hardware reason {reason:#x} on cpu {cpu}"
                )),
                VcpuExit::InternalError => {
                    // SAFETY: `run_area` is the `kvm_run` mapping owned by `self.fd`, alive as
                    // long as `self`; KVM_RUN has returned with KVM_EXIT_INTERNAL_ERROR, so the
                    // `internal` member of the exit union is the one KVM filled in.
                    let internal = unsafe { (*self.run_area).__bindgen_anon_1.internal };
                    VmExit::Unhandled(describe_internal_error(
                        internal.suberror,
                        &internal.data[..(internal.ndata as usize).min(internal.data.len())],
                    ))
                }
                other => VmExit::Unhandled(format!("{other:?}")),
            }),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                // SAFETY: `run_area` is the `kvm_run` mapping owned by `self.fd`, alive as long as
                // `self`; `fd.run()` has returned so nothing else references it.
                unsafe { std::ptr::write_volatile(&raw mut (*self.run_area).immediate_exit, 0) };
                Ok(VmExit::Interrupted)
            }
            Err(e) => Err(HypervisorError::Run(e.into())),
        }
    }

    fn kicker(&self) -> Box<dyn VcpuKicker> {
        Box::new(KvmVcpuKicker {
            target: self.target.clone(),
        })
    }

    fn regs(&self) -> Result<StandardRegisters> {
        let r = self.fd.get_regs().map_err(Self::state_err("get_regs"))?;
        Ok(StandardRegisters {
            rax: r.rax,
            rbx: r.rbx,
            rcx: r.rcx,
            rdx: r.rdx,
            rsi: r.rsi,
            rdi: r.rdi,
            rsp: r.rsp,
            rbp: r.rbp,
            r8: r.r8,
            r9: r.r9,
            r10: r.r10,
            r11: r.r11,
            r12: r.r12,
            r13: r.r13,
            r14: r.r14,
            r15: r.r15,
            rip: r.rip,
            rflags: r.rflags,
        })
    }

    fn set_regs(&self, r: &StandardRegisters) -> Result<()> {
        let regs = kvm_regs {
            rax: r.rax,
            rbx: r.rbx,
            rcx: r.rcx,
            rdx: r.rdx,
            rsi: r.rsi,
            rdi: r.rdi,
            rsp: r.rsp,
            rbp: r.rbp,
            r8: r.r8,
            r9: r.r9,
            r10: r.r10,
            r11: r.r11,
            r12: r.r12,
            r13: r.r13,
            r14: r.r14,
            r15: r.r15,
            rip: r.rip,
            rflags: r.rflags,
        };
        self.fd.set_regs(&regs).map_err(Self::state_err("set_regs"))
    }

    fn sregs(&self) -> Result<SpecialRegisters> {
        let s = self.fd.get_sregs().map_err(Self::state_err("get_sregs"))?;
        Ok(SpecialRegisters {
            cs: segment_from_kvm(&s.cs),
            ds: segment_from_kvm(&s.ds),
            es: segment_from_kvm(&s.es),
            fs: segment_from_kvm(&s.fs),
            gs: segment_from_kvm(&s.gs),
            ss: segment_from_kvm(&s.ss),
            tr: segment_from_kvm(&s.tr),
            ldt: segment_from_kvm(&s.ldt),
            gdt: DescriptorTable {
                base: s.gdt.base,
                limit: s.gdt.limit,
            },
            idt: DescriptorTable {
                base: s.idt.base,
                limit: s.idt.limit,
            },
            cr0: s.cr0,
            cr2: s.cr2,
            cr3: s.cr3,
            cr4: s.cr4,
            cr8: s.cr8,
            efer: s.efer,
            apic_base: s.apic_base,
        })
    }

    fn set_sregs(&self, s: &SpecialRegisters) -> Result<()> {
        // Start from the current state to keep the pending-interrupt bitmap.
        let current: kvm_sregs = self.fd.get_sregs().map_err(Self::state_err("get_sregs"))?;
        let sregs = kvm_sregs {
            cs: segment_to_kvm(&s.cs),
            ds: segment_to_kvm(&s.ds),
            es: segment_to_kvm(&s.es),
            fs: segment_to_kvm(&s.fs),
            gs: segment_to_kvm(&s.gs),
            ss: segment_to_kvm(&s.ss),
            tr: segment_to_kvm(&s.tr),
            ldt: segment_to_kvm(&s.ldt),
            gdt: dtable_to_kvm(&s.gdt),
            idt: dtable_to_kvm(&s.idt),
            cr0: s.cr0,
            cr2: s.cr2,
            cr3: s.cr3,
            cr4: s.cr4,
            cr8: s.cr8,
            efer: s.efer,
            apic_base: s.apic_base,
            interrupt_bitmap: current.interrupt_bitmap,
        };
        self.fd
            .set_sregs(&sregs)
            .map_err(Self::state_err("set_sregs"))
    }

    fn set_fpu(&self, fpu: &FpuState) -> Result<()> {
        let kfpu = kvm_fpu {
            fcw: fpu.fcw,
            mxcsr: fpu.mxcsr,
            ..Default::default()
        };
        self.fd.set_fpu(&kfpu).map_err(Self::state_err("set_fpu"))
    }

    fn set_msrs(&self, msrs: &[MsrEntry]) -> Result<()> {
        let entries: Vec<kvm_msr_entry> = msrs
            .iter()
            .map(|m| kvm_msr_entry {
                index: m.index,
                data: m.data,
                ..Default::default()
            })
            .collect();
        let kvm_msrs = Msrs::from_entries(&entries).map_err(|_| HypervisorError::VcpuState {
            op: "set_msrs",
            source: std::io::Error::from_raw_os_error(libc::E2BIG),
        })?;
        let written = self
            .fd
            .set_msrs(&kvm_msrs)
            .map_err(Self::state_err("set_msrs"))?;
        if written != entries.len() {
            let failed = entries.get(written).map(|e| e.index).unwrap_or_default();
            return Err(HypervisorError::VcpuState {
                op: "set_msrs",
                source: std::io::Error::other(format!("msr {failed:#x} was refused")),
            });
        }
        Ok(())
    }

    fn set_cpuid(&self, entries: &[CpuidEntry]) -> Result<()> {
        let kvm_entries: Vec<kvm_cpuid_entry2> = entries
            .iter()
            .map(|e| kvm_cpuid_entry2 {
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
        let cpuid = CpuId::from_entries(&kvm_entries).map_err(|_| HypervisorError::VcpuState {
            op: "set_cpuid",
            source: std::io::Error::from_raw_os_error(libc::E2BIG),
        })?;
        self.fd
            .set_cpuid2(&cpuid)
            .map_err(Self::state_err("set_cpuid"))
    }

    fn setup_lapic(&self) -> Result<()> {
        let mut lapic = self.fd.get_lapic().map_err(Self::state_err("get_lapic"))?;
        let lvt0 = lapic_reg(&lapic.regs, APIC_LVT0);
        set_lapic_reg(
            &mut lapic.regs,
            APIC_LVT0,
            with_delivery_mode(lvt0, APIC_MODE_EXTINT),
        );
        let lvt1 = lapic_reg(&lapic.regs, APIC_LVT1);
        set_lapic_reg(
            &mut lapic.regs,
            APIC_LVT1,
            with_delivery_mode(lvt1, APIC_MODE_NMI),
        );
        self.fd
            .set_lapic(&lapic)
            .map_err(Self::state_err("set_lapic"))
    }

    fn save_state(&self) -> Result<crate::x86_64::VcpuState> {
        super::state::save_vcpu(&self.fd, &self.msrs_to_save)
    }

    fn restore_state(&self, state: &crate::x86_64::VcpuState) -> Result<()> {
        super::state::restore_vcpu(&self.fd, state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_with_delivery_mode() {
        assert_eq!(
            with_delivery_mode(0x0001_0000, APIC_MODE_EXTINT),
            0x0001_0700
        );
        assert_eq!(with_delivery_mode(0x0000_0700, APIC_MODE_NMI), 0x0000_0400);
    }

    #[test]
    fn test_describe_internal_error() {
        assert_eq!(
            describe_internal_error(1, &[0x2, 0x0f01ca]),
            "kvm internal error: emulation failure (suberror 1), data [0x2, 0xf01ca]"
        );
        assert!(describe_internal_error(9, &[]).contains("unknown suberror"));
    }

    #[test]
    fn test_lapic_reg_roundtrip() {
        let mut regs = [0 as libc::c_char; 1024];
        set_lapic_reg(&mut regs, APIC_LVT1, 0xdead_beef);
        assert_eq!(lapic_reg(&regs, APIC_LVT1), 0xdead_beef);
    }
}
