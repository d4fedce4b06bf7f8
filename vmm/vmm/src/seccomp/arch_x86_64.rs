//! The x86_64 part of the allow-lists: system calls aarch64 does not have (its libcs use the
//! `*at` and `epoll_pwait` forms there), and the BPF filters' arch.

use seccompiler::TargetArch;

use super::filters::{any, Allowed};
use super::ThreadKind;

/// The arch the filters are compiled for.
pub(super) const TARGET: TargetArch = TargetArch::x86_64;

/// What a thread of `kind` may do on top of the portable list.
pub(super) fn allowed(kind: ThreadKind) -> Vec<Allowed> {
    match kind {
        ThreadKind::Devices => vec![any("epoll_wait", libc::SYS_epoll_wait)],
        ThreadKind::Api => vec![
            // musl's open() is the `open` system call.
            any("open", libc::SYS_open),
            any("mkdir", libc::SYS_mkdir),
            any("rename", libc::SYS_rename),
            any("epoll_wait", libc::SYS_epoll_wait),
        ],
        _ => Vec::new(),
    }
}
