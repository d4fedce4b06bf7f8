//! seccomp filters, one per kind of VMM thread (Firecracker's model).
//!
//! Each thread of the VMM installs its own filter, which allows only the system calls that
//! thread makes (with, where it matters, the `ioctl` requests, socket domains, `fcntl`
//! commands and `madvise` advice it uses); anything else kills the whole process with
//! `SIGSYS` (`SECCOMP_RET_KILL_PROCESS`), so a compromised thread cannot go on. The lists are
//! in [`filters`], measured by running every KVM test of `rmachine-vmm` under `strace -f`.
//!
//! | thread | filter installed |
//! | --- | --- |
//! | `main` | once the VM runs and the API serves, before it waits for the VM to stop |
//! | `vcpuN` | once its vCPU is created and configured, before the first `KVM_RUN` |
//! | `devices` | first thing in the thread (the event loop) |
//! | `api` | first thing in the thread (the HTTP server) |
//! | `serial-stdin` | first thing in the thread |
//! | `jail` (the jail's waiting parent, see `jail`) | once its child runs |
//!
//! Threads a filtered thread starts (the vhost-user deadline watchdog, started by a vCPU
//! thread) inherit its filter. `--no-seccomp` turns the filters off (debugging only);
//! `--seccomp-deny THREAD:SYSCALL` removes one system call from one thread's list, which is
//! how the tests show that a forbidden call kills the VMM.

#[cfg(target_arch = "aarch64")]
mod arch_aarch64;
#[cfg(target_arch = "x86_64")]
mod arch_x86_64;
mod filters;

#[cfg(target_arch = "aarch64")]
use arch_aarch64 as arch;
#[cfg(target_arch = "x86_64")]
use arch_x86_64 as arch;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::thread::JoinHandle;

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter};

/// Errors of building and installing filters.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// A `--seccomp-deny` value is not `THREAD:SYSCALL`.
    #[error("--seccomp-deny {0:?}: expected THREAD:SYSCALL (threads: {threads})", threads = ThreadKind::names())]
    DenySyntax(String),
    /// A `--seccomp-deny` value names an unknown thread.
    #[error("--seccomp-deny {0:?}: no thread kind {1:?} (threads: {threads})", threads = ThreadKind::names())]
    UnknownThread(String, String),
    /// A `--seccomp-deny` value names a system call the thread is not allowed anyway.
    #[error("--seccomp-deny {0:?}: {1} is not in the {2} thread's allow-list")]
    NotAllowed(String, String, &'static str),
    /// seccompiler refused a filter.
    #[error("cannot build the seccomp filter of the {0} thread")]
    Build(&'static str, #[source] seccompiler::Error),
    /// The kernel refused a filter.
    #[error("cannot install the seccomp filter of the {0} thread")]
    Install(&'static str, #[source] seccompiler::Error),
}

/// The kinds of VMM threads; each has its own filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ThreadKind {
    /// The main thread, waiting for the VM to stop.
    Main,
    /// A vCPU thread, also handling the guest's port and MMIO accesses.
    Vcpu,
    /// The device event loop.
    Devices,
    /// The control API server.
    Api,
    /// The reader of the VMM's stdin for the serial console.
    SerialStdin,
    /// The jail's parent process, waiting for the jailed VMM.
    Jail,
}

impl ThreadKind {
    /// Every kind.
    pub const ALL: [ThreadKind; 6] = [
        ThreadKind::Main,
        ThreadKind::Vcpu,
        ThreadKind::Devices,
        ThreadKind::Api,
        ThreadKind::SerialStdin,
        ThreadKind::Jail,
    ];

    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            ThreadKind::Main => "main",
            ThreadKind::Vcpu => "vcpu",
            ThreadKind::Devices => "devices",
            ThreadKind::Api => "api",
            ThreadKind::SerialStdin => "serial-stdin",
            ThreadKind::Jail => "jail",
        }
    }

    fn names() -> String {
        Self::ALL.map(Self::name).join(", ")
    }
}

/// What the filters do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeccompSettings {
    /// Install filters at all. Default: true.
    pub enabled: bool,
    /// Let a call outside the lists through and have the kernel log it (audit log), instead
    /// of killing the process: for finding what a list lacks. Default: false.
    pub log_only: bool,
    /// `THREAD:SYSCALL` pairs removed from the allow-lists (for tests). Default: none.
    pub deny: Vec<String>,
}

impl Default for SeccompSettings {
    fn default() -> Self {
        SeccompSettings {
            enabled: true,
            log_only: false,
            deny: Vec::new(),
        }
    }
}

/// The compiled filters of every thread kind, or none when filtering is off.
#[derive(Debug, Default)]
pub struct Filters {
    /// Installed in order; the kernel applies the strictest verdict of all.
    programs: BTreeMap<ThreadKind, Vec<BpfProgram>>,
}

impl Filters {
    /// No filtering.
    pub fn off() -> Arc<Self> {
        Arc::new(Filters::default())
    }

    /// Compiles the filters `settings` asks for.
    pub fn build(settings: &SeccompSettings) -> Result<Arc<Self>, SeccompError> {
        if !settings.enabled {
            return Ok(Self::off());
        }
        let mut lists: BTreeMap<ThreadKind, Vec<filters::Allowed>> = ThreadKind::ALL
            .iter()
            .map(|&kind| (kind, filters::allowed(kind)))
            .collect();
        for entry in &settings.deny {
            let (thread, syscall) = entry
                .split_once(':')
                .ok_or_else(|| SeccompError::DenySyntax(entry.clone()))?;
            let kind = ThreadKind::ALL
                .into_iter()
                .find(|k| k.name() == thread)
                .ok_or_else(|| SeccompError::UnknownThread(entry.clone(), thread.to_string()))?;
            let list = lists.get_mut(&kind).expect("every kind has a list");
            let before = list.len();
            list.retain(|a| a.name != syscall);
            if list.len() == before {
                return Err(SeccompError::NotAllowed(
                    entry.clone(),
                    syscall.to_string(),
                    kind.name(),
                ));
            }
            tracing::warn!(
                thread = kind.name(),
                syscall,
                "seccomp: removed from the allow-list"
            );
        }
        let mismatch = if settings.log_only {
            SeccompAction::Log
        } else {
            SeccompAction::KillProcess
        };
        let mut programs = BTreeMap::new();
        for (kind, list) in lists {
            let rules = list.into_iter().map(|a| (a.nr, a.rules)).collect();
            let mut filters = Vec::new();
            if filters::clone3_enosys(kind) {
                // clone3's flags sit in memory a filter cannot read: refused, glibc falls
                // back to clone, whose flags the allow-list checks. Installed first: once the
                // allow-list is in, installing a filter (prctl, seccomp) is refused.
                let rules = BTreeMap::from([(libc::SYS_clone3, Vec::new())]);
                let enosys = SeccompAction::Errno(libc::ENOSYS as u32);
                filters.push(compile(kind, rules, SeccompAction::Allow, enosys)?);
            }
            filters.push(compile(
                kind,
                rules,
                mismatch.clone(),
                SeccompAction::Allow,
            )?);
            programs.insert(kind, filters);
        }
        Ok(Arc::new(Filters { programs }))
    }

    /// Whether any filter is installed by [`Filters::apply`].
    pub fn enabled(&self) -> bool {
        !self.programs.is_empty()
    }

    /// Installs the filter of `kind` on the calling thread (nothing when filtering is off).
    /// Sets `no_new_privs` as the kernel requires of an unprivileged thread.
    pub fn apply(&self, kind: ThreadKind) -> Result<(), SeccompError> {
        for program in self.programs.get(&kind).into_iter().flatten() {
            seccompiler::apply_filter(program)
                .map_err(|e| SeccompError::Install(kind.name(), e))?;
        }
        if self.enabled() {
            tracing::debug!(thread = kind.name(), "seccomp filter installed");
        }
        Ok(())
    }
}

/// Spawns thread `name` whose first act is to install the filter of `kind`; returns once it
/// did, or the error if it could not (the thread then ends without running `f`).
pub fn spawn<F, T>(
    name: &str,
    kind: ThreadKind,
    filters: &Arc<Filters>,
    f: F,
) -> std::io::Result<JoinHandle<Option<T>>>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    let filters = filters.clone();
    let handle = std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            let installed = filters.apply(kind);
            let ok = installed.is_ok();
            let _ = tx.send(installed);
            ok.then(f)
        })?;
    match rx.recv() {
        Ok(Ok(())) => Ok(handle),
        Ok(Err(e)) => Err(std::io::Error::other(e)),
        Err(_) => Err(std::io::Error::other(format!(
            "thread {name} ended before installing its seccomp filter"
        ))),
    }
}

fn compile(
    kind: ThreadKind,
    rules: BTreeMap<i64, Vec<seccompiler::SeccompRule>>,
    mismatch: SeccompAction,
    matched: SeccompAction,
) -> Result<BpfProgram, SeccompError> {
    let filter = SeccompFilter::new(rules, mismatch, matched, arch::TARGET)
        .map_err(|e| SeccompError::Build(kind.name(), e.into()))?;
    filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| SeccompError::Build(kind.name(), e.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_every_thread_kind_has_a_filter_that_compiles() {
        let filters = Filters::build(&SeccompSettings::default()).unwrap();
        for kind in ThreadKind::ALL {
            assert!(filters.programs.contains_key(&kind), "{kind:?}");
        }
        assert!(filters.enabled());
        assert!(!Filters::build(&SeccompSettings {
            enabled: false,
            ..Default::default()
        })
        .unwrap()
        .enabled());
    }

    #[test]
    fn test_deny_refuses_bad_entries_naming_them() {
        let build = |deny: &str| {
            Filters::build(&SeccompSettings {
                deny: vec![deny.to_string()],
                ..Default::default()
            })
            .map(|_| ())
            .unwrap_err()
            .to_string()
        };
        assert!(build("api").contains("expected THREAD:SYSCALL"));
        assert!(build("gpu:read").contains("no thread kind \"gpu\""));
        assert!(build("api:reboot").contains("reboot is not in the api thread's allow-list"));
        Filters::build(&SeccompSettings {
            deny: vec!["api:tgkill".to_string()],
            ..Default::default()
        })
        .unwrap();
    }

    #[test]
    fn test_a_denied_syscall_kills_the_process_with_sigsys() {
        // In a child process: install the main thread's filter without `getpid`, call it.
        use std::os::unix::process::ExitStatusExt;
        if std::env::var("RMTEST_SECCOMP_CHILD").is_ok() {
            let filters = Filters::build(&SeccompSettings {
                deny: vec!["main:getpid".to_string()],
                ..Default::default()
            })
            .unwrap();
            filters.apply(ThreadKind::Main).unwrap();
            // SAFETY: getpid has no preconditions; the filter kills the process here.
            unsafe { libc::getpid() };
            std::process::exit(0);
        }
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "seccomp::tests::test_a_denied_syscall_kills_the_process_with_sigsys",
                "--nocapture",
            ])
            .env("RMTEST_SECCOMP_CHILD", "1")
            .status()
            .unwrap();
        assert_eq!(status.signal(), Some(libc::SIGSYS), "{status}");
    }
}
