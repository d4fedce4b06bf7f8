//! Shared pieces of the benchmarks: statistics and report lines.
#![forbid(unsafe_code)]

use std::time::Duration;

/// The median of some durations (the mean of the middle two for an even count).
pub fn median(mut samples: Vec<Duration>) -> Duration {
    assert!(!samples.is_empty(), "no samples");
    samples.sort();
    let n = samples.len();
    if n % 2 == 1 {
        samples[n / 2]
    } else {
        (samples[n / 2 - 1] + samples[n / 2]) / 2
    }
}

/// Seconds with millisecond precision.
pub fn secs(d: Duration) -> String {
    format!("{:.3} s", d.as_secs_f64())
}

/// Prints one result line: `name: value (detail)`.
pub fn report(name: &str, value: &str, detail: &str) {
    if detail.is_empty() {
        println!("{name}: {value}");
    } else {
        println!("{name}: {value} ({detail})");
    }
}

/// Resident set size of a process in KiB, from /proc.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// User plus system CPU time of a process so far, from /proc/PID/stat.
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(") ")?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // Clock ticks are 100 per second on Linux x86_64.
    Some(Duration::from_millis((utime + stime) * 10))
}

/// The workspace's root folder.
pub fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("benches/ sits in the workspace")
        .to_path_buf()
}

/// Builds `package` with the `benchmark` profile, so its binaries sit beside the
/// running bench; an error names the command that failed.
pub fn build_benchmark_profile(package: &str) -> Result<(), String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = std::process::Command::new(cargo)
        .args(["build", "--profile", "benchmark", "-p", package])
        .current_dir(workspace_root())
        .status()
        .map_err(|e| format!("run cargo: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!(
            "cargo build --profile benchmark -p {package} failed"
        ))
    }
}

/// Builds the `rmachine` CLI (and so the host agent) with the `benchmark` profile beside
/// this bench, where `rmachine_e2e::rmachine_bin` looks first: without it a bench would
/// measure the debug build's host agent (unoptimized dependencies: its SSH crypto and
/// proxy copies run many times slower). `RMACHINE_BIN=path` skips the build.
pub fn build_rmachine() {
    if std::env::var_os("RMACHINE_BIN").is_some() {
        return;
    }
    eprintln!("building rmachine (benchmark profile) for the host agent under test");
    if let Err(e) = build_benchmark_profile("rmachine") {
        panic!("{e}");
    }
}

/// A number from the environment variable `name` (a bench's size or count), else `default`.
pub fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One `GET /_ping` on a new connection to the engine's unix socket, as the docker CLI
/// does; an answer other than `200 OK` is the error.
#[cfg(unix)]
pub fn engine_ping(socket: &std::path::Path) -> Result<(), String> {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(socket).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    s.write_all(b"GET /_ping HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(|e| e.to_string())?;
    if out.starts_with("HTTP/1.1 200") && out.ends_with("OK") {
        Ok(())
    } else {
        Err(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_median_odd_and_even() {
        let ms = |v: &[u64]| {
            v.iter()
                .map(|&m| Duration::from_millis(m))
                .collect::<Vec<_>>()
        };
        assert_eq!(median(ms(&[5, 1, 3])), Duration::from_millis(3));
        assert_eq!(median(ms(&[4, 1, 3, 2])), Duration::from_micros(2500));
    }

    #[test]
    fn test_own_process_stats_are_readable() {
        let me = std::process::id();
        assert!(rss_kib(me).unwrap() > 0);
        assert!(cpu_time(me).is_some());
    }
}
