//! The allow-lists, per thread kind.
//!
//! Measured with `RMTEST_VMM_STRACE=DIR cargo nextest run -p rmachine-vmm` (every KVM test
//! under `strace -f -ff`, the filters in audit mode: see `tests/support`), summarised per
//! thread by `vmm/vmm/tests/seccomp_audit.py DIR`: what each thread does after its filter is
//! installed. On top of that, what any thread may do although a short test run may not show
//! it: allocate and free memory (glibc's malloc maps, unmaps, trims and grows arenas), take
//! locks, sleep, write a log line, end (a thread's exit unmaps its signal stack), abort on a
//! panic (`tgkill` with SIGABRT), and seed a `HashMap` (`getrandom`).

use seccompiler::{SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompRule};

use super::ThreadKind;

/// `KVM_RUN` (linux/kvm.h: `_IO(KVMIO, 0x80)`).
const KVM_RUN: u64 = 0xae80;
/// `KVM_IRQ_LINE` (`_IOW(KVMIO, 0x61, struct kvm_irq_level)`).
const KVM_IRQ_LINE: u64 = 0x4008_ae61;
/// `FIONBIO` (what std's `set_nonblocking` uses on sockets): asm-generic/ioctls.h, the
/// value on x86_64 and aarch64 (the libc crate types it differently for glibc and musl).
const FIONBIO: u64 = 0x5421;
/// The flags glibc's `pthread_create` passes to `clone` (the fallback when `clone3` is
/// refused): a thread of this process, nothing else. musl adds `CLONE_DETACHED` (ignored by
/// the kernel since 2.6) to the same set ([`MUSL_THREAD_CLONE_FLAGS`]).
const THREAD_CLONE_FLAGS: u64 = (libc::CLONE_VM
    | libc::CLONE_FS
    | libc::CLONE_FILES
    | libc::CLONE_SIGHAND
    | libc::CLONE_THREAD
    | libc::CLONE_SYSVSEM
    | libc::CLONE_SETTLS
    | libc::CLONE_PARENT_SETTID
    | libc::CLONE_CHILD_CLEARTID) as u64;

/// The flags musl's `pthread_create` passes to `clone` (a static musl build).
const MUSL_THREAD_CLONE_FLAGS: u64 = THREAD_CLONE_FLAGS | 0x0040_0000;

/// One allowed system call: any arguments when `rules` is empty, else those matching a rule.
pub(super) struct Allowed {
    pub name: &'static str,
    pub nr: i64,
    pub rules: Vec<SeccompRule>,
}

/// `name` with any arguments.
pub(super) fn any(name: &'static str, nr: i64) -> Allowed {
    Allowed {
        name,
        nr,
        rules: Vec::new(),
    }
}

/// `name` when argument `index` (compared as 32 bits) is one of `values`.
fn arg_in(name: &'static str, nr: i64, index: u8, values: &[u64]) -> Allowed {
    let rules = values
        .iter()
        .map(|&v| {
            let cond = SeccompCondition::new(index, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, v)
                .expect("argument indexes here are below 6");
            SeccompRule::new(vec![cond]).expect("a rule of one condition is valid")
        })
        .collect();
    Allowed { name, nr, rules }
}

/// Adds `extra` to `list`, merging the rules of a system call already there.
fn add(list: &mut Vec<Allowed>, extra: Vec<Allowed>) {
    for a in extra {
        match list.iter_mut().find(|b| b.nr == a.nr) {
            // Either one allows any arguments: the merged entry does too.
            Some(b) if b.rules.is_empty() || a.rules.is_empty() => b.rules.clear(),
            Some(b) => b.rules.extend(a.rules),
            None => list.push(a),
        }
    }
}

/// What every thread may do (see the module doc).
fn common() -> Vec<Allowed> {
    vec![
        any("brk", libc::SYS_brk),
        any("mmap", libc::SYS_mmap),
        any("munmap", libc::SYS_munmap),
        any("mremap", libc::SYS_mremap),
        any("mprotect", libc::SYS_mprotect),
        // MADV_FREE: musl's malloc gives freed groups back that way (a static musl build).
        arg_in(
            "madvise",
            libc::SYS_madvise,
            2,
            &[libc::MADV_DONTNEED as u64, libc::MADV_FREE as u64],
        ),
        any("futex", libc::SYS_futex),
        any("sched_yield", libc::SYS_sched_yield),
        any("clock_gettime", libc::SYS_clock_gettime),
        any("clock_nanosleep", libc::SYS_clock_nanosleep),
        any("nanosleep", libc::SYS_nanosleep),
        any("write", libc::SYS_write),
        any("writev", libc::SYS_writev),
        any("close", libc::SYS_close),
        any("getrandom", libc::SYS_getrandom),
        any("sigaltstack", libc::SYS_sigaltstack),
        any("rt_sigprocmask", libc::SYS_rt_sigprocmask),
        any("rt_sigreturn", libc::SYS_rt_sigreturn),
        any("getpid", libc::SYS_getpid),
        any("gettid", libc::SYS_gettid),
        arg_in("tgkill", libc::SYS_tgkill, 2, &[libc::SIGABRT as u64]),
        any("exit", libc::SYS_exit),
        any("exit_group", libc::SYS_exit_group),
    ]
}

/// Syscalls of a thread that starts threads: the vCPU thread starts the vhost-user deadline
/// watchdog when it activates or resets a virtio-fs device, and that thread inherits its
/// filter. `clone3` is refused with ENOSYS by a second filter ([`clone3_enosys`]), so glibc
/// falls back to `clone`, whose flags a filter can check.
fn thread_spawning() -> Vec<Allowed> {
    vec![
        arg_in(
            "clone",
            libc::SYS_clone,
            0,
            &[THREAD_CLONE_FLAGS, MUSL_THREAD_CLONE_FLAGS],
        ),
        any("clone3", libc::SYS_clone3),
        any("set_robust_list", libc::SYS_set_robust_list),
        any("rseq", libc::SYS_rseq),
        arg_in("prctl", libc::SYS_prctl, 0, &[libc::PR_SET_NAME as u64]),
        any("sched_getaffinity", libc::SYS_sched_getaffinity),
        arg_in("shutdown", libc::SYS_shutdown, 1, &[libc::SHUT_RDWR as u64]),
    ]
}

/// The system calls a thread of `kind` may make.
pub(super) fn allowed(kind: ThreadKind) -> Vec<Allowed> {
    let mut list = common();
    let fcntl = |cmds: &[libc::c_int]| {
        let cmds: Vec<u64> = cmds.iter().map(|&c| c as u64).collect();
        arg_in("fcntl", libc::SYS_fcntl, 1, &cmds)
    };
    let extra = match kind {
        ThreadKind::Main => vec![],
        ThreadKind::Vcpu => {
            let mut ioctls = vec![KVM_RUN, KVM_IRQ_LINE];
            // A snapshot: each parked vCPU thread saves its own vCPU.
            ioctls.extend(hypervisor::kvm::vcpu_save_ioctls());
            let mut v = vec![
                arg_in("ioctl", libc::SYS_ioctl, 1, &ioctls),
                // The vhost-user exchanges of virtio-fs activation and reset.
                any("sendmsg", libc::SYS_sendmsg),
                any("recvmsg", libc::SYS_recvmsg),
                any("read", libc::SYS_read),
                fcntl(&[libc::F_DUPFD_CLOEXEC, libc::F_GETFD]),
            ];
            v.extend(thread_spawning());
            v
        }
        ThreadKind::Devices => vec![
            arg_in("ioctl", libc::SYS_ioctl, 1, &[KVM_IRQ_LINE, FIONBIO]),
            any("epoll_pwait", libc::SYS_epoll_pwait),
            any("epoll_ctl", libc::SYS_epoll_ctl),
            // Queues: disks, the rng, TAP and passt streams, eventfds.
            any("read", libc::SYS_read),
            any("readv", libc::SYS_readv),
            any("lseek", libc::SYS_lseek),
            any("fdatasync", libc::SYS_fdatasync),
            any("fallocate", libc::SYS_fallocate),
            any("recvfrom", libc::SYS_recvfrom),
            any("sendto", libc::SYS_sendto),
            // vsock: host connections in, connections out to `<uds>_<port>`.
            any("accept4", libc::SYS_accept4),
            arg_in("socket", libc::SYS_socket, 0, &[libc::AF_UNIX as u64]),
            any("connect", libc::SYS_connect),
            any("getsockopt", libc::SYS_getsockopt),
            any("shutdown", libc::SYS_shutdown),
            fcntl(&[libc::F_GETFD, libc::F_GETFL, libc::F_SETFL]),
            // The balloon's discards (shared memory needs MADV_REMOVE).
            arg_in("madvise", libc::SYS_madvise, 2, &[libc::MADV_REMOVE as u64]),
        ],
        ThreadKind::Api => vec![
            // Shutdown raises the i8042's interrupt; a snapshot saves the VM-wide state.
            arg_in("ioctl", libc::SYS_ioctl, 1, &{
                let mut v = vec![KVM_IRQ_LINE, FIONBIO];
                v.extend(hypervisor::kvm::vm_save_ioctls());
                v
            }),
            // A snapshot: the folder, the memory file (sparse: sized, then written where the
            // guest's pages are, found with mincore or SEEK_DATA), the state file, renames.
            any("mkdirat", libc::SYS_mkdirat),
            any("openat", libc::SYS_openat),
            any("newfstatat", libc::SYS_newfstatat),
            any("statx", libc::SYS_statx),
            any("fstat", libc::SYS_fstat),
            any("ftruncate", libc::SYS_ftruncate),
            any("pwrite64", libc::SYS_pwrite64),
            any("lseek", libc::SYS_lseek),
            any("mincore", libc::SYS_mincore),
            // ... and the writable disks are synced.
            any("fsync", libc::SYS_fsync),
            any("fdatasync", libc::SYS_fdatasync),
            any("renameat", libc::SYS_renameat),
            any("renameat2", libc::SYS_renameat2),
            // The state file's document (serde_json buffers it) and the api's write.
            any("write", libc::SYS_write),
            any("epoll_pwait", libc::SYS_epoll_pwait),
            any("epoll_ctl", libc::SYS_epoll_ctl),
            any("accept4", libc::SYS_accept4),
            any("read", libc::SYS_read),
            any("recvfrom", libc::SYS_recvfrom),
            any("sendto", libc::SYS_sendto),
            any("shutdown", libc::SYS_shutdown),
            fcntl(&[libc::F_GETFD, libc::F_GETFL, libc::F_SETFL]),
            // Pause kicks the vCPUs.
            arg_in(
                "tgkill",
                libc::SYS_tgkill,
                2,
                &[hypervisor::kvm::kick_signal() as u64],
            ),
        ],
        ThreadKind::SerialStdin => vec![
            any("read", libc::SYS_read),
            // Input raises the serial port's interrupt.
            arg_in("ioctl", libc::SYS_ioctl, 1, &[KVM_IRQ_LINE]),
        ],
        ThreadKind::Jail => vec![
            any("wait4", libc::SYS_wait4),
            any("kill", libc::SYS_kill),
            any("rt_sigaction", libc::SYS_rt_sigaction),
            any("prlimit64", libc::SYS_prlimit64),
            // Re-raising the child's fatal signal on itself.
            any("tgkill", libc::SYS_tgkill),
        ],
    };
    add(&mut list, extra);
    add(&mut list, super::arch::allowed(kind));
    list
}

/// The system calls refused with ENOSYS, in a second filter, for `kind`.
pub(super) fn clone3_enosys(kind: ThreadKind) -> bool {
    kind == ThreadKind::Vcpu
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_add_merges_rules_of_one_syscall() {
        let mut list = common();
        let before = list.len();
        add(
            &mut list,
            vec![arg_in(
                "tgkill",
                libc::SYS_tgkill,
                2,
                &[libc::SIGRTMIN() as u64],
            )],
        );
        assert_eq!(list.len(), before);
        let tgkill = list.iter().find(|a| a.name == "tgkill").unwrap();
        assert_eq!(tgkill.rules.len(), 2);
        add(&mut list, vec![any("tgkill", libc::SYS_tgkill)]);
        let tgkill = list.iter().find(|a| a.name == "tgkill").unwrap();
        assert!(tgkill.rules.is_empty());
    }

    #[test]
    fn test_names_match_numbers_and_appear_once() {
        for kind in ThreadKind::ALL {
            let list = allowed(kind);
            let mut names: Vec<&str> = list.iter().map(|a| a.name).collect();
            names.sort();
            names.dedup();
            assert_eq!(names.len(), list.len(), "{kind:?}: a name appears twice");
        }
        assert_eq!(THREAD_CLONE_FLAGS, 0x3d_0f00);
    }
}
