//! Processes named by more than their PID: a [`ProcessId`] is a PID with the process's
//! start time, so a PID the system reused for another process is never taken for it (and
//! never signalled). Liveness, command lines and start times come from `sysinfo` (which
//! reads /proc on Linux and the system's own calls elsewhere); signals and detaching are
//! per OS.

use std::ffi::OsString;

use serde::{Deserialize, Serialize};
use sysinfo::{Pid, ProcessRefreshKind, ProcessesToUpdate, System, UpdateKind};

#[cfg(unix)]
#[path = "process_unix.rs"]
mod os;
#[cfg(windows)]
#[path = "process_windows.rs"]
mod os;
// Waiting for a process that is not our child: a pidfd on Linux, polling elsewhere.
#[cfg(target_os = "linux")]
#[path = "process_exit_linux.rs"]
mod exit;
#[cfg(not(target_os = "linux"))]
#[path = "process_exit_poll.rs"]
mod exit;

pub use os::detach;

/// A process as recorded in `state.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ProcessId {
    pub pid: u32,
    /// When it started (seconds since the Unix epoch, as the system reports it).
    pub started: u64,
}

/// What a process costs the host so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ProcessUsage {
    /// CPU time used since it started, in milliseconds (all its threads).
    pub cpu_time_ms: u64,
    /// Resident memory, in bytes.
    pub rss_bytes: u64,
}

impl std::ops::Add for ProcessUsage {
    type Output = ProcessUsage;
    fn add(self, other: ProcessUsage) -> ProcessUsage {
        ProcessUsage {
            cpu_time_ms: self.cpu_time_ms + other.cpu_time_ms,
            rss_bytes: self.rss_bytes + other.rss_bytes,
        }
    }
}

/// What the system knows of one live process.
struct Found {
    started: u64,
    cmd: Vec<OsString>,
}

fn find(pid: u32) -> Option<Found> {
    let pid = Pid::from_u32(pid);
    let mut system = System::new();
    system.refresh_processes_specifics(
        ProcessesToUpdate::Some(&[pid]),
        false,
        ProcessRefreshKind::nothing().with_cmd(UpdateKind::Always),
    );
    let process = system.process(pid)?;
    // A zombie has exited: only its exit status is left for its parent to collect.
    if process.status() == sysinfo::ProcessStatus::Zombie {
        return None;
    }
    Some(Found {
        started: process.start_time(),
        cmd: process.cmd().to_vec(),
    })
}

impl ProcessId {
    /// Its CPU time and resident memory, while it is alive (not another process that got
    /// its PID).
    pub fn usage(&self) -> Option<ProcessUsage> {
        let pid = Pid::from_u32(self.pid);
        let mut system = System::new();
        system.refresh_processes_specifics(
            ProcessesToUpdate::Some(&[pid]),
            false,
            ProcessRefreshKind::nothing().with_cpu().with_memory(),
        );
        let process = system.process(pid)?;
        if process.start_time() != self.started
            || process.status() == sysinfo::ProcessStatus::Zombie
        {
            return None;
        }
        Some(ProcessUsage {
            cpu_time_ms: process.accumulated_cpu_time(),
            rss_bytes: process.memory(),
        })
    }

    /// The live process `pid` as it is now.
    pub fn of(pid: u32) -> Option<ProcessId> {
        find(pid).map(|f| ProcessId {
            pid,
            started: f.started,
        })
    }

    /// This process.
    pub fn current() -> ProcessId {
        ProcessId::of(std::process::id()).expect("this process is alive")
    }

    /// Whether this very process still runs (not another one that got its PID).
    pub fn is_alive(&self) -> bool {
        find(self.pid).is_some_and(|f| f.started == self.started)
    }

    /// Its command line, while it is alive.
    pub fn cmdline(&self) -> Option<Vec<String>> {
        find(self.pid)
            .filter(|f| f.started == self.started)
            .map(|f| {
                f.cmd
                    .iter()
                    .map(|a| a.to_string_lossy().into_owned())
                    .collect()
            })
    }

    /// Asks it to end (SIGTERM; on Windows, where there is no such request for a
    /// console-less process, it is ended). Nothing happens when it is gone.
    pub fn terminate(&self) {
        if self.is_alive() {
            os::terminate(self.pid);
        }
    }

    /// Ends it at once (SIGKILL, TerminateProcess). Nothing happens when it is gone.
    pub fn kill(&self) {
        if self.is_alive() {
            os::kill(self.pid);
        }
    }

    /// Returns once this process has ended (at once when it is gone already). It need
    /// not be a child of this one: a host agent watches the VM an earlier one started.
    pub async fn exited(&self) {
        exit::exited(self).await
    }

    /// Waits up to `timeout` for it to end; whether it did.
    pub fn wait_gone(&self, timeout: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if !self.is_alive() {
                return true;
            }
            if std::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn sleeper() -> std::process::Child {
        os::sleeper()
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap()
    }

    #[test]
    fn test_identity_survives_only_with_its_start_time() {
        let me = ProcessId::current();
        assert!(me.is_alive());
        let other = ProcessId {
            started: me.started.wrapping_sub(3600),
            ..me
        };
        assert!(
            !other.is_alive(),
            "same PID, other start time: another process"
        );
        assert!(other.cmdline().is_none());
        assert!(!me.cmdline().unwrap().is_empty());
    }

    #[test]
    fn test_usage_counts_cpu_time_and_memory_of_the_process_itself() {
        let me = ProcessId::current();
        let before = me.usage().expect("this process's usage");
        assert!(before.rss_bytes > 1 << 20, "{before:?}");
        // Burn some CPU: the counter moves.
        let deadline = std::time::Instant::now() + Duration::from_millis(300);
        let mut x = 0u64;
        while std::time::Instant::now() < deadline {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        let after = me.usage().unwrap();
        assert!(
            after.cpu_time_ms > before.cpu_time_ms,
            "{before:?} {after:?}"
        );
        let other = ProcessId {
            started: me.started.wrapping_sub(3600),
            ..me
        };
        assert_eq!(other.usage(), None, "same PID, another process");
    }

    #[test]
    fn test_kill_ends_the_process_and_a_gone_one_is_left_alone() {
        let mut child = sleeper();
        let id = ProcessId::of(child.id()).unwrap();
        assert!(id.is_alive());
        id.kill();
        child.wait().unwrap();
        assert!(id.wait_gone(Duration::from_secs(10)));
        // Gone: neither signalled again nor alive.
        id.kill();
        id.terminate();
        assert!(!id.is_alive());
        assert!(ProcessId::of(child.id()).is_none());
    }

    #[tokio::test]
    async fn test_exit_of_a_process_is_heard() {
        let mut child = sleeper();
        let id = ProcessId::of(child.id()).unwrap();
        let watch = tokio::spawn(async move { id.exited().await });
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!watch.is_finished(), "it still runs");
        child.kill().unwrap();
        child.wait().unwrap();
        tokio::time::timeout(Duration::from_secs(10), watch)
            .await
            .expect("its end is heard")
            .unwrap();
        // A process that is gone already: at once.
        tokio::time::timeout(Duration::from_secs(5), id.exited())
            .await
            .expect("a gone process has exited");
    }

    #[test]
    fn test_terminate_asks_the_process_to_end() {
        let mut child = sleeper();
        let id = ProcessId::of(child.id()).unwrap();
        id.terminate();
        child.wait().unwrap();
        assert!(!id.is_alive());
    }
}
