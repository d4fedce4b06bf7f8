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

use kvm_bindings::kvm_run;
use kvm_ioctls::{VcpuExit, VcpuFd};
use vmm_sys_util::signal::SIGRTMIN;

use crate::{HypervisorError, Result, VcpuKicker, VmExit};

#[cfg(target_arch = "aarch64")]
pub(super) use super::vcpu_aarch64::VcpuArch;
#[cfg(target_arch = "x86_64")]
pub(super) use super::vcpu_x86_64::VcpuArch;

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
    pub(super) fd: VcpuFd,
    /// The `kvm_run` mapping owned by `fd`.
    run_area: *mut kvm_run,
    target: Arc<KickTarget>,
    /// What the arch's register accessors need.
    pub(super) arch: VcpuArch,
    _not_send: PhantomData<*const ()>,
}

impl KvmVcpu {
    pub(super) fn new(mut fd: VcpuFd, arch: VcpuArch) -> Self {
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
            arch,
            _not_send: PhantomData,
        }
    }

    pub(super) fn state_err(op: &'static str) -> impl Fn(kvm_ioctls::Error) -> HypervisorError {
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

impl KvmVcpu {
    /// `KVM_RUN` and its exit in portable terms (what every arch's `Vcpu::run` returns).
    pub(super) fn run_exit(&mut self) -> Result<VmExit<'_>> {
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

    /// The kicker of this vCPU.
    pub(super) fn new_kicker(&self) -> Box<dyn VcpuKicker> {
        Box::new(KvmVcpuKicker {
            target: self.target.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_describe_internal_error() {
        assert_eq!(
            describe_internal_error(1, &[0x2, 0x0f01ca]),
            "kvm internal error: emulation failure (suberror 1), data [0x2, 0xf01ca]"
        );
        assert!(describe_internal_error(9, &[]).contains("unknown suberror"));
    }
}
