//! Shutting the guest down: stop the engine gracefully, end every other process, flush
//! and unmount the data disk, then reset the machine.

use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::reboot::{reboot, RebootMode};
use nix::sys::signal::{kill, Signal};
use nix::unistd::{sync, Pid};
use tracing::{error, info, warn};

use crate::data_disk;
use crate::engine::Engine;
use crate::logging::LogSink;

/// How long other processes get after SIGTERM before SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(5);
/// How long killed processes get to disappear.
const KILL_WAIT: Duration = Duration::from_secs(2);

/// `PF_KTHREAD` in the flags of /proc/PID/stat: a kernel thread.
const PF_KTHREAD: u64 = 0x0020_0000;

/// A request to shut down, from the host or a signal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShutdownRequest {
    /// Whether the host asked for a reboot (the machine resets either way, see
    /// [`reset`]).
    pub reboot: bool,
    pub reason: String,
}

/// Parses `/proc/PID/stat`: the state letter and the flags.
pub fn parse_stat(stat: &str) -> Option<(char, u64)> {
    // The command name (field 2) is in parentheses and may contain anything, so fields
    // are counted from the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    // After the state: ppid, pgrp, session, tty_nr, tpgid, then flags.
    let flags = fields.nth(5)?.parse().ok()?;
    Some((state, flags))
}

/// Pids of user processes other than the agent that are still alive (not zombies).
pub fn remaining_processes(proc_dir: &Path) -> Vec<i32> {
    let me = std::process::id() as i32;
    let Ok(entries) = std::fs::read_dir(proc_dir) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != me && pid != 1)
        .filter(|pid| {
            std::fs::read_to_string(proc_dir.join(pid.to_string()).join("stat"))
                .ok()
                .and_then(|stat| parse_stat(&stat))
                .is_some_and(|(state, flags)| state != 'Z' && flags & PF_KTHREAD == 0)
        })
        .collect()
}

/// Signals every process but PID 1, waits up to `wait` for them to be gone; returns
/// how many are left.
async fn end_all(signal: Signal, wait: Duration) -> usize {
    if let Err(e) = kill(Pid::from_raw(-1), signal) {
        // ESRCH: nothing left to signal.
        info!(error = %e, "kill(-1, {}) found nothing", signal.as_str());
    }
    let deadline = Instant::now() + wait;
    loop {
        let left = remaining_processes(Path::new("/proc")).len();
        if left == 0 || Instant::now() >= deadline {
            return left;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Everything before the reset. Only for PID 1: it signals every process.
pub async fn run(request: &ShutdownRequest, engine: Option<Engine>, log: &LogSink) {
    let started = Instant::now();
    info!(reboot = request.reboot, "shutting down: {}", request.reason);
    if let Some(engine) = engine {
        engine.stop().await;
    }
    let left = end_all(Signal::SIGTERM, TERM_GRACE).await;
    if left > 0 {
        warn!(
            left,
            "processes still running {TERM_GRACE:?} after SIGTERM; killing them"
        );
        let left = end_all(Signal::SIGKILL, KILL_WAIT).await;
        if left > 0 {
            warn!(left, "processes survived SIGKILL");
        }
    }
    sync();
    info!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        "processes stopped; unmounting the data disk"
    );
    // The log file lives on the data disk.
    log.detach_file();
    data_disk::unmount();
    sync();
    info!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        "shutdown complete"
    );
}

/// Resets the machine. Never returns: PID 1 must not exit (the kernel would panic).
///
/// Power-off and reboot both use `reboot(RB_AUTOBOOT)`, a reset: the VMMs that run this
/// guest exit when the guest resets (QEMU runs with `-no-reboot`, rmachine-vmm exits on
/// the i8042 reset), so a reset ends the VM, and the host starts it again when it wants a
/// reboot. A microvm without ACPI has no other way to power off: `RB_POWER_OFF` would
/// only halt the CPUs and leave the VMM running.
pub fn reset() -> ! {
    sync();
    info!("resetting the machine");
    let Err(e) = reboot(RebootMode::RB_AUTOBOOT);
    error!(error = %e, "reboot failed; halting here");
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_parse_stat_handles_odd_command_names() {
        let stat = "1234 (my (odd) proc) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 5 0";
        assert_eq!(parse_stat(stat), Some(('S', 4_194_560)));
        let kthread = "2 (kthreadd) S 0 0 0 0 -1 2129984 0 0 0 0 0 0 0 0 20 0 1 0 1 0";
        let (_, flags) = parse_stat(kthread).unwrap();
        assert_ne!(flags & PF_KTHREAD, 0);
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn test_remaining_processes_skips_kernel_threads_zombies_and_self() {
        let dir = tempfile::tempdir().unwrap();
        let me = std::process::id();
        let procs = [
            (
                me.to_string(),
                format!("{me} (agent) S 0 0 0 0 -1 4194560 0"),
            ),
            (
                "1".to_string(),
                "1 (init) S 0 0 0 0 -1 4194560 0".to_string(),
            ),
            (
                "2".to_string(),
                "2 (kthreadd) S 0 0 0 0 -1 2129984 0".to_string(),
            ),
            (
                "300".to_string(),
                "300 (dockerd) S 1 300 300 0 -1 4194560 0".to_string(),
            ),
            (
                "301".to_string(),
                "301 (defunct) Z 1 301 301 0 -1 4194560 0".to_string(),
            ),
        ];
        for (pid, stat) in procs {
            std::fs::create_dir_all(dir.path().join(&pid)).unwrap();
            std::fs::write(dir.path().join(&pid).join("stat"), stat).unwrap();
        }
        std::fs::create_dir_all(dir.path().join("sys")).unwrap();
        assert_eq!(remaining_processes(dir.path()), [300]);
    }
}
