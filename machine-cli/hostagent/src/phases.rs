//! Where a start's time goes: the host agent's own steps on its clock, the guest agent's
//! steps (reported on the guest's boot clock) placed beside them, all in milliseconds
//! since the host agent began the start, kept in `state.json` (`start_phases`) for
//! `rmachine inspect` and the machine bench.

use std::time::{Duration, Instant};

use rmachine_machine::state::{PhaseClock, StartPhase};
use rmachine_machine::sys::local_socket::{self, Endpoint};
use rmachine_protocol::control::{GuestInfo, MAX_BOOT_PHASES};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::SharedState;

/// Longest phase name kept from the guest (it is untrusted).
const MAX_NAME: usize = 64;

/// How long the `_ping` through the machine's own docker endpoint may take.
const ENGINE_PING_TIMEOUT: Duration = Duration::from_secs(30);

/// Records a start's phases into the machine's state as they finish.
#[derive(Clone)]
pub(crate) struct Phases {
    began: Instant,
    state: SharedState,
}

impl Phases {
    /// Starts the clock: the start begins now.
    pub(crate) fn begin(state: SharedState) -> Phases {
        Phases {
            began: Instant::now(),
            state,
        }
    }

    /// Milliseconds since the start began.
    pub(crate) fn now_ms(&self) -> u64 {
        self.began.elapsed().as_millis() as u64
    }

    /// Milliseconds from the start's beginning to `at`.
    pub(crate) fn ms_at(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.began).as_millis() as u64
    }

    /// A host step finished at `ms`.
    pub(crate) fn mark_at(&self, name: &str, ms: u64) {
        self.record(vec![StartPhase::host(name, ms)]);
    }

    /// A host step finished now.
    pub(crate) fn mark(&self, name: &str) {
        self.mark_at(name, self.now_ms());
    }

    /// The guest's steps, from an `info` reply that arrived at `info_at_ms`, placed with
    /// the help of an earlier reading of the guest's clock where there is one.
    pub(crate) fn guest(&self, info: &GuestInfo, info_at_ms: u64, earlier: Option<Anchor>) {
        let last = Anchor {
            uptime_s: info.uptime_s,
            at_ms: info_at_ms,
        };
        self.record(guest_on_host(info, last, earlier));
    }

    fn record(&self, phases: Vec<StartPhase>) {
        self.state.update(|s| {
            s.start_phases.extend(phases);
            s.start_phases.sort_by_key(|p| p.ms);
        });
    }
}

/// A reading of the guest's boot clock: its uptime in a reply that reached the host
/// `at_ms` into the start.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Anchor {
    pub(crate) uptime_s: f64,
    pub(crate) at_ms: u64,
}

/// Under software emulation the guest's clock runs at another rate than the host's (its
/// TSC is calibrated against emulated timers: seen here 10 % slow on a loaded machine,
/// far slower under strace); two readings farther apart than this give its rate.
const MIN_RATE_SPAN_MS: f64 = 1000.0;

/// The guest's boot phases placed on the host's clock. The guest's boot clock started
/// when its kernel began keeping time; the `last` reply carried its uptime, so a guest
/// time `g` happened `uptime - g` guest milliseconds before that reply (the reply's own
/// trip, a few milliseconds, is the error). With an `earlier` reading too, guest
/// milliseconds are scaled by the rate the two readings show, so that steps far from the
/// last reply (the kernel's start) are not off by the guest clock's drift. A phase later
/// than the reply's uptime is not believed.
pub(crate) fn guest_on_host(
    info: &GuestInfo,
    last: Anchor,
    earlier: Option<Anchor>,
) -> Vec<StartPhase> {
    let valid = |uptime: f64| uptime.is_finite() && uptime > 0.0;
    if !valid(last.uptime_s) {
        return Vec::new();
    }
    let uptime_ms = last.uptime_s * 1000.0;
    // Host milliseconds per guest millisecond.
    let rate = earlier
        .filter(|e| valid(e.uptime_s))
        .and_then(|e| {
            let guest = uptime_ms - e.uptime_s * 1000.0;
            let host = last.at_ms as f64 - e.at_ms as f64;
            (guest >= MIN_RATE_SPAN_MS && host >= MIN_RATE_SPAN_MS).then(|| host / guest)
        })
        // A rate this far from 1 is a broken reading, not a slow clock.
        .filter(|r| (0.05..=20.0).contains(r))
        .unwrap_or(1.0);
    let on_host =
        |guest_ms: f64| (last.at_ms as f64 - (uptime_ms - guest_ms) * rate).max(0.0) as u64;
    let guest = |name: String, ms: u64| StartPhase {
        name,
        ms,
        clock: PhaseClock::Guest,
    };
    let mut phases = vec![guest("kernel started".into(), on_host(0.0))];
    phases.extend(
        info.boot_phases
            .iter()
            .take(MAX_BOOT_PHASES)
            // /proc/uptime has 10 ms steps: a phase just before the reply may read later.
            .filter(|p| (p.ms as f64) <= uptime_ms + 10.0)
            .map(|p| guest(clean_name(&p.name), on_host(p.ms as f64))),
    );
    phases
}

/// A guest-given name fit to print: printable characters only, bounded.
fn clean_name(name: &str) -> String {
    let cleaned: String = name
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_NAME)
        .collect();
    if cleaned.is_empty() {
        "(unnamed)".into()
    } else {
        cleaned
    }
}

/// Asks the engine for `_ping` through the machine's own docker endpoint, the way the
/// docker CLI reaches it: the proxy, the guest link and dockerd all answered.
pub(crate) async fn engine_ping(endpoint: &Endpoint) -> anyhow::Result<()> {
    let ask = async {
        let mut stream = local_socket::connect(endpoint).await?;
        stream
            .write_all(b"GET /_ping HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n")
            .await?;
        let mut answer = Vec::new();
        // The status line is enough; a misbehaving peer cannot make this read forever.
        let mut chunk = [0u8; 512];
        while !answer.windows(2).any(|w| w == b"\r\n") && answer.len() < 4096 {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            answer.extend_from_slice(&chunk[..n]);
        }
        anyhow::Ok(answer)
    };
    let answer = tokio::time::timeout(ENGINE_PING_TIMEOUT, ask)
        .await
        .map_err(|_| anyhow::anyhow!("no answer within {ENGINE_PING_TIMEOUT:?}"))??;
    let line = String::from_utf8_lossy(&answer);
    let status = line.lines().next().unwrap_or_default();
    if status.starts_with("HTTP/1.1 200") || status.starts_with("HTTP/1.0 200") {
        Ok(())
    } else {
        anyhow::bail!("the engine answered {status:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rmachine_protocol::control::{BootPhase, ProcessInfo, ServiceState};

    fn info(uptime_s: f64, phases: &[(&str, u64)]) -> GuestInfo {
        let process = ProcessInfo {
            state: ServiceState::Running,
            pid: Some(1),
            restarts: 0,
            last_error: None,
        };
        GuestInfo {
            agent: "0.1.0".into(),
            protocol: 1,
            kernel: "6.12".into(),
            hostname: "m".into(),
            uptime_s,
            mem_total_kib: 1,
            mem_available_kib: 1,
            cpus: 1,
            ip: None,
            data_disk_mounted: true,
            containerd: process.clone(),
            dockerd: process,
            boot_phases: phases
                .iter()
                .map(|(name, ms)| BootPhase {
                    name: name.to_string(),
                    ms: *ms,
                })
                .collect(),
        }
    }

    #[test]
    fn test_guest_phases_land_on_the_host_clock() {
        // The reply came 20 s into the start; the guest had been up 18 s.
        let last = Anchor {
            uptime_s: 18.0,
            at_ms: 20_000,
        };
        let phases = guest_on_host(
            &info(18.0, &[("agent started", 900), ("dockerd ready", 17_500)]),
            last,
            None,
        );
        let got: Vec<(&str, u64)> = phases.iter().map(|p| (p.name.as_str(), p.ms)).collect();
        assert_eq!(
            got,
            vec![
                ("kernel started", 2_000),
                ("agent started", 2_900),
                ("dockerd ready", 19_500)
            ]
        );
        assert!(phases.iter().all(|p| p.clock == PhaseClock::Guest));
    }

    #[test]
    fn test_a_slow_guest_clock_is_scaled_by_two_readings() {
        // The guest counted 8 s while the host counted 10 s: its clock runs at 0.8.
        let earlier = Anchor {
            uptime_s: 2.0,
            at_ms: 6_000,
        };
        let last = Anchor {
            uptime_s: 10.0,
            at_ms: 16_000,
        };
        let phases = guest_on_host(
            &info(10.0, &[("agent started", 1_000)]),
            last,
            Some(earlier),
        );
        let got: Vec<(&str, u64)> = phases.iter().map(|p| (p.name.as_str(), p.ms)).collect();
        assert_eq!(
            got,
            vec![("kernel started", 3_500), ("agent started", 4_750)]
        );
        // Readings too close together are not used.
        let close = Anchor {
            uptime_s: 9.9,
            at_ms: 15_900,
        };
        let phases = guest_on_host(&info(10.0, &[]), last, Some(close));
        assert_eq!(phases[0].ms, 6_000);
        // Nor a rate of 30: one guest second for thirty of the host's.
        let (earlier, last) = (
            Anchor {
                uptime_s: 1.0,
                at_ms: 10_000,
            },
            Anchor {
                uptime_s: 2.0,
                at_ms: 40_000,
            },
        );
        let phases = guest_on_host(&info(2.0, &[]), last, Some(earlier));
        assert_eq!(phases[0].ms, 38_000);
    }

    #[test]
    fn test_untrusted_guest_phases_are_bounded_and_cleaned() {
        let many: Vec<(String, u64)> = (0..100).map(|i| (format!("p{i}"), i)).collect();
        let many: Vec<(&str, u64)> = many.iter().map(|(n, ms)| (n.as_str(), *ms)).collect();
        let at = |uptime_s| Anchor {
            uptime_s,
            at_ms: 6_000,
        };
        assert_eq!(
            guest_on_host(&info(5.0, &many), at(5.0), None).len(),
            MAX_BOOT_PHASES + 1
        );

        let odd = "x\u{1b}[31m".to_string() + &"y".repeat(500);
        let phases = guest_on_host(
            &info(5.0, &[(&odd, 10), ("", 20), ("later", 99_000)]),
            at(5.0),
            None,
        );
        let names: Vec<&str> = phases.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(
            names.len(),
            3,
            "the phase after the reply is dropped: {names:?}"
        );
        assert!(names[1].starts_with("x[31my") && names[1].chars().count() == MAX_NAME);
        assert_eq!(names[2], "(unnamed)");
        // A guest whose clock is nonsense gives nothing to place.
        assert!(guest_on_host(&info(f64::NAN, &[("a", 1)]), at(f64::NAN), None).is_empty());
        assert!(guest_on_host(&info(-1.0, &[("a", 1)]), at(-1.0), Some(at(1.0))).is_empty());
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn test_engine_ping_reads_the_status_line() {
        let dir = tempfile::tempdir().unwrap();
        let answers: [&[u8]; 3] = [
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOK",
            b"HTTP/1.1 503 Service Unavailable\r\n\r\n",
            b"\x00\xffgarbage without a line end",
        ];
        for (i, answer) in answers.into_iter().enumerate() {
            let path = dir.path().join(format!("d{i}.sock"));
            let listener = tokio::net::UnixListener::bind(&path).unwrap();
            let server = tokio::spawn(async move {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut request = [0u8; 256];
                let _ = s.read(&mut request).await.unwrap();
                s.write_all(answer).await.unwrap();
            });
            let result = engine_ping(&Endpoint::Unix(path)).await;
            server.await.unwrap();
            match i {
                0 => result.unwrap(),
                _ => assert!(result.is_err(), "answer {i} accepted"),
            }
        }
        let missing = engine_ping(&Endpoint::Unix(dir.path().join("none.sock"))).await;
        assert!(missing.is_err());
    }
}
