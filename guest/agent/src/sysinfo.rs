//! Facts about the running guest read from the kernel: release, uptime, memory, CPUs.

use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum SysinfoError {
    #[error("cannot read {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} has no {field}")]
    Missing { path: String, field: &'static str },
}

fn read(path: &Path) -> Result<String, SysinfoError> {
    std::fs::read_to_string(path).map_err(|source| SysinfoError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// The kernel release (`uname -r`), or "unknown".
pub fn kernel_release() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_else(|_| "unknown".into())
}

/// Milliseconds on the boot clock (`CLOCK_BOOTTIME`: counting since the kernel started
/// keeping time, suspends included), the clock of `/proc/uptime`.
pub fn boot_clock_ms() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map(|t| t.tv_sec() as u64 * 1000 + t.tv_nsec() as u64 / 1_000_000)
        .unwrap_or(0)
}

/// Seconds since boot, from `/proc/uptime`.
pub fn uptime_s(proc_uptime: &Path) -> Result<f64, SysinfoError> {
    let text = read(proc_uptime)?;
    text.split_whitespace()
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| SysinfoError::Missing {
            path: proc_uptime.display().to_string(),
            field: "uptime",
        })
}

/// `(MemTotal, MemAvailable)` in KiB, from `/proc/meminfo`.
pub fn meminfo_kib(proc_meminfo: &Path) -> Result<(u64, u64), SysinfoError> {
    let text = read(proc_meminfo)?;
    let field = |name: &'static str| {
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
            .ok_or_else(|| SysinfoError::Missing {
                path: proc_meminfo.display().to_string(),
                field: name,
            })
    };
    Ok((field("MemTotal")?, field("MemAvailable")?))
}

/// Number of CPUs available to the agent.
pub fn cpus() -> u32 {
    std::thread::available_parallelism()
        .map(|n| u32::try_from(n.get()).unwrap_or(u32::MAX))
        .unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_uptime_and_meminfo_parsing() {
        let dir = tempfile::tempdir().unwrap();
        let uptime = dir.path().join("uptime");
        std::fs::write(&uptime, "12.34 20.00\n").unwrap();
        assert_eq!(uptime_s(&uptime).unwrap(), 12.34);
        let meminfo = dir.path().join("meminfo");
        std::fs::write(
            &meminfo,
            "MemTotal:        2017240 kB\nMemFree:  100 kB\nMemAvailable:    1800000 kB\n",
        )
        .unwrap();
        assert_eq!(meminfo_kib(&meminfo).unwrap(), (2_017_240, 1_800_000));
        std::fs::write(&meminfo, "MemTotal: 5 kB\n").unwrap();
        assert_eq!(
            meminfo_kib(&meminfo).unwrap_err().to_string(),
            format!("{} has no MemAvailable", meminfo.display())
        );
    }

    #[test]
    fn test_real_proc_values_are_plausible() {
        let uptime_ms = (uptime_s(Path::new("/proc/uptime")).unwrap() * 1000.0) as u64;
        // /proc/uptime has 10 ms steps; the boot clock is the same clock.
        assert!(boot_clock_ms().abs_diff(uptime_ms) < 1000);
        assert!(uptime_s(Path::new("/proc/uptime")).unwrap() > 0.0);
        let (total, available) = meminfo_kib(Path::new("/proc/meminfo")).unwrap();
        assert!(total >= available && total > 0);
        assert!(cpus() >= 1);
        assert_ne!(kernel_release(), "unknown");
    }
}
