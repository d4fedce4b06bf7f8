//! The aarch64 part of the allow-lists: nothing beyond the portable list (aarch64 has only the
//! `*at` and `epoll_pwait` forms, which it already holds), and the BPF filters' arch.
//!
//! Compiled, and checked by the unit tests of the aarch64 build; the lists were measured on
//! x86_64 only (run the VMM with `--seccomp-log` to find what an aarch64 thread lacks).

use seccompiler::TargetArch;

use super::filters::Allowed;
use super::ThreadKind;

/// The arch the filters are compiled for.
pub(super) const TARGET: TargetArch = TargetArch::aarch64;

/// What a thread of `kind` may do on top of the portable list.
pub(super) fn allowed(_kind: ThreadKind) -> Vec<Allowed> {
    Vec::new()
}
