//! What a running machine costs, both sides of the VM boundary: on the host, its VM
//! process (rmachine-vmm or QEMU), helper daemons and host agent (CPU time, resident
//! memory); in the guest, CPU time and memory in use, read from the guest's `/proc`
//! through the agent's exec service. Each is a cumulative sample: rates come from two
//! samples ([`HostUsage::cpu_percent_since`], [`GuestUsage::cpu_percent_since`]).

use serde::Serialize;

use crate::exec::{self, ExecError};
use crate::guest_link::Carrier;
use crate::state::MachineState;
use crate::sys::process::ProcessUsage;

/// Why the guest's usage could not be read.
#[derive(Debug, thiserror::Error)]
pub enum UsageError {
    #[error("cannot run the guest's usage probe")]
    Exec(#[from] ExecError),
    #[error("the guest's usage probe failed (exit code {code}): {stderr}")]
    Probe { code: i32, stderr: String },
    #[error("the guest's {file} has no {field}")]
    Missing {
        file: &'static str,
        field: &'static str,
    },
}

/// The host's side of a machine at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct HostUsage {
    /// The VM process (rmachine-vmm or QEMU); `None` when it is not running.
    pub vm: Option<ProcessUsage>,
    /// Its helper daemons together (virtiofsd, passt, …).
    pub helpers: ProcessUsage,
    /// The host agent (Engine API proxy, published ports).
    pub hostagent: Option<ProcessUsage>,
}

impl HostUsage {
    /// Everything the machine costs the host.
    pub fn total(&self) -> ProcessUsage {
        self.vm.unwrap_or_default() + self.helpers + self.hostagent.unwrap_or_default()
    }

    /// The CPU its processes used between two samples taken `elapsed_ms` apart, in
    /// percent of one host core.
    pub fn cpu_percent_since(&self, earlier: &HostUsage, elapsed_ms: u64) -> f64 {
        let used = self
            .total()
            .cpu_time_ms
            .saturating_sub(earlier.total().cpu_time_ms);
        percent(used as f64, elapsed_ms as f64)
    }
}

/// The host's side of a machine, from the processes its state records.
pub fn host_usage(state: &MachineState) -> HostUsage {
    HostUsage {
        vm: state.vm.and_then(|p| p.usage()),
        helpers: state
            .helpers
            .iter()
            .filter_map(|h| h.id.usage())
            .fold(ProcessUsage::default(), |a, b| a + b),
        hostagent: state.hostagent.and_then(|p| p.usage()),
    }
}

/// The guest's side of a machine at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct GuestUsage {
    /// Clock ticks all CPUs spent busy since boot (everything but idle and iowait).
    pub cpu_busy_ticks: u64,
    /// Clock ticks all CPUs counted since boot.
    pub cpu_total_ticks: u64,
    /// Online CPUs.
    pub cpus: u32,
    pub mem_total_kib: u64,
    /// What the guest could hand out without swapping (`MemAvailable`).
    pub mem_available_kib: u64,
}

impl GuestUsage {
    /// Memory in use (total less available), in KiB.
    pub fn mem_used_kib(&self) -> u64 {
        self.mem_total_kib.saturating_sub(self.mem_available_kib)
    }

    /// The guest's CPU use between two samples, in percent of one guest CPU (a busy
    /// 2-CPU guest shows 200, as `docker stats` counts).
    pub fn cpu_percent_since(&self, earlier: &GuestUsage) -> f64 {
        let busy = self.cpu_busy_ticks.saturating_sub(earlier.cpu_busy_ticks) as f64;
        let total = self.cpu_total_ticks.saturating_sub(earlier.cpu_total_ticks) as f64;
        if total <= 0.0 {
            return 0.0;
        }
        busy / total * 100.0 * f64::from(self.cpus.max(1))
    }
}

/// What the probe prints: `/proc/stat`, then a separator line, then `/proc/meminfo`.
const PROBE: &str = "cat /proc/stat; echo ---; cat /proc/meminfo";

/// Reads the guest's CPU and memory counters (one short command through the agent).
pub async fn guest_usage(carrier: &Carrier) -> Result<GuestUsage, UsageError> {
    let outcome = exec::run(carrier, &["/bin/sh", "-c", PROBE], b"").await?;
    if outcome.code != 0 {
        return Err(UsageError::Probe {
            code: outcome.code,
            stderr: outcome.stderr_text(),
        });
    }
    parse_guest_usage(&String::from_utf8_lossy(&outcome.stdout))
}

/// Parses the probe's output.
pub fn parse_guest_usage(text: &str) -> Result<GuestUsage, UsageError> {
    let (stat, meminfo) = text.split_once("\n---\n").unwrap_or((text, ""));
    let missing = |file, field| UsageError::Missing { file, field };
    let cpu: Vec<u64> = stat
        .lines()
        .find_map(|l| l.strip_prefix("cpu "))
        .ok_or(missing("/proc/stat", "cpu line"))?
        .split_whitespace()
        .map(|n| n.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is within user).
    let total: u64 = cpu.iter().take(8).sum();
    let idle = cpu.get(3).copied().unwrap_or(0) + cpu.get(4).copied().unwrap_or(0);
    let cpus = stat
        .lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .count() as u32;
    let field = |name: &'static str| {
        meminfo
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .ok_or(missing("/proc/meminfo", name))
    };
    Ok(GuestUsage {
        cpu_busy_ticks: total.saturating_sub(idle),
        cpu_total_ticks: total,
        cpus: cpus.max(1),
        mem_total_kib: field("MemTotal")?,
        mem_available_kib: field("MemAvailable")?,
    })
}

/// `used` of `elapsed` as a percentage (0 when no time passed).
fn percent(used: f64, elapsed: f64) -> f64 {
    if elapsed <= 0.0 {
        0.0
    } else {
        used / elapsed * 100.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROBE_OUTPUT: &str = "cpu  100 5 50 800 20 1 2 0 0 0\n\
cpu0 50 2 25 400 10 1 1 0 0 0\n\
cpu1 50 3 25 400 10 0 1 0 0 0\n\
intr 12345\n\
---\n\
MemTotal:        2017240 kB\n\
MemFree:          100000 kB\n\
MemAvailable:    1500000 kB\n";

    #[test]
    fn test_probe_output_parses_into_ticks_and_memory() {
        let u = parse_guest_usage(PROBE_OUTPUT).unwrap();
        assert_eq!(
            u,
            GuestUsage {
                cpu_busy_ticks: 158,
                cpu_total_ticks: 978,
                cpus: 2,
                mem_total_kib: 2_017_240,
                mem_available_kib: 1_500_000,
            }
        );
        assert_eq!(u.mem_used_kib(), 517_240);
    }

    #[test]
    fn test_guest_cpu_percent_counts_per_cpu() {
        let a = parse_guest_usage(PROBE_OUTPUT).unwrap();
        // Both CPUs fully busy for 100 ticks each.
        let b = GuestUsage {
            cpu_busy_ticks: a.cpu_busy_ticks + 200,
            cpu_total_ticks: a.cpu_total_ticks + 200,
            ..a
        };
        assert!((b.cpu_percent_since(&a) - 200.0).abs() < 1e-9);
        assert_eq!(a.cpu_percent_since(&a), 0.0, "no time passed");
    }

    #[test]
    fn test_garbage_probe_output_is_an_error_not_a_panic() {
        for bad in [
            "",
            "garbage\n\0\u{fffd}",
            "cpu  1 2 3\n---\nMemTotal: x kB\n",
        ] {
            let e = parse_guest_usage(bad).unwrap_err();
            assert!(e.to_string().starts_with("the guest's /proc/"), "{e}");
        }
    }

    #[test]
    fn test_host_cpu_percent_of_one_core() {
        let at = |ms| HostUsage {
            vm: Some(ProcessUsage {
                cpu_time_ms: ms,
                rss_bytes: 100,
            }),
            helpers: ProcessUsage {
                cpu_time_ms: 10,
                rss_bytes: 1,
            },
            hostagent: None,
        };
        assert!((at(1500).cpu_percent_since(&at(1000), 1000) - 50.0).abs() < 1e-9);
        assert_eq!(at(1000).total().rss_bytes, 101);
        assert_eq!(at(1000).cpu_percent_since(&at(1000), 0), 0.0);
    }
}
