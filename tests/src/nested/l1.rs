//! Running L1 under QEMU's software emulation and reading its console.
//!
//! QEMU's TCG emulates AMD SVM (`-cpu max`), so the stock Debian kernel in L1 gets a working
//! `/dev/kvm` from kvm-amd. `-M q35` (SeaBIOS) because `-M microvm` hangs that kernel at timer
//! calibration under TCG; `-smp 1` because TCG runs one vCPU fastest.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// L1's RAM in MiB (the guest gets [`super::l2::L2_MEMORY_MIB`] of it).
pub const L1_MEMORY_MIB: u64 = 2560;

/// The disks handed to L1, by the serial the L1 init looks for.
pub struct Disks<'a> {
    /// The guest image's read-only root filesystem (`rm-root`).
    pub root: &'a Path,
    /// The guest's data disk (`rm-data`).
    pub data: &'a Path,
    /// The guest's config disk (`rm-config`).
    pub config: &'a Path,
}

/// Fails with the fix when QEMU is missing.
pub fn require_qemu() {
    let ok = Command::new("qemu-system-x86_64")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "qemu-system-x86_64 is missing: install the Debian package qemu-system-x86 \
         (the nested test runs L1 under QEMU's software emulation)"
    );
}

/// `qemu-system-x86_64` on `PATH` (the one that runs L1, and the peer the benchmark copies
/// into L1).
pub fn qemu_binary() -> PathBuf {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("qemu-system-x86_64"))
        .find(|path| path.is_file())
        .expect("qemu-system-x86_64 is not on PATH: install the Debian package qemu-system-x86")
}

/// The QEMU command line of L1; `append_extra` goes on L1's kernel command line (words the
/// init reads from `/proc/cmdline`).
pub fn command(vmlinuz: &Path, initramfs: &Path, disks: &Disks, append_extra: &str) -> Command {
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-accel", "tcg", "-M", "q35", "-cpu", "max", "-smp", "1"])
        .args(["-m", &L1_MEMORY_MIB.to_string()])
        .args(["-nodefaults", "-no-user-config", "-nographic"])
        .args(["-serial", "stdio", "-no-reboot"]);
    for (id, path, opts) in [
        ("root", disks.root, "readonly=on"),
        ("data", disks.data, "cache=unsafe"),
        ("config", disks.config, "readonly=on"),
    ] {
        cmd.arg("-drive").arg(format!(
            "id={id},file={},format=raw,if=none,{opts}",
            path.display()
        ));
        cmd.arg("-device")
            .arg(format!("virtio-blk-pci,drive={id},serial=rm-{id}"));
    }
    cmd.arg("-kernel")
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(initramfs)
        .arg("-append")
        .arg(
            format!("console=ttyS0 reboot=t panic=-1 mitigations=off quiet {append_extra}")
                .trim_end(),
        );
    cmd
}

/// One console line and when it arrived (seconds since QEMU started).
pub type Line = (f64, String);

/// What an L1 run gave.
pub struct Run {
    /// Every console line.
    pub lines: Vec<Line>,
    /// QEMU was killed at the deadline.
    pub timed_out: bool,
    /// QEMU was killed because L1 froze: its process used no CPU for [`FROZEN_AFTER`].
    pub frozen: bool,
    /// Wall time of the run.
    pub elapsed: Duration,
    /// QEMU's stderr.
    pub stderr: String,
}

/// L1's QEMU, killed when dropped: a panic anywhere in the caller leaves no VM behind.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// How long L1's QEMU may use no CPU at all before L1 counts as frozen. A working L1 always
/// uses some (its timer ticks, its init, L2 under its KVM); seen in CI: an L1 whose QEMU used
/// no CPU for 15 minutes, its console stopped mid-line, until the test's deadline.
pub const FROZEN_AFTER: Duration = Duration::from_secs(150);

/// CPU time (user + system) of a process, in clock ticks, from `/proc/PID/stat`.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command's closing parenthesis: state is the 3rd field, utime and
    // stime the 14th and 15th.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// How many times an L1 that froze is run again. Seen on this machine: an L1 frozen twice
/// in a row (the nested machine test with the jailed VMM, on a quiet host, 2026-12-07).
pub const FROZEN_RERUNS: usize = 2;

/// [`run`], and again (at most [`FROZEN_RERUNS`] times) when L1 froze (a hang of the
/// emulated nested hypervisor, not of what runs in it), saying so on stderr; `make` builds
/// the same command each time.
pub fn run_again_if_frozen(make: impl Fn() -> Command, timeout: Duration, log: &Path) -> Run {
    let started = Instant::now();
    let mut run = self::run(make(), timeout, log);
    for attempt in 1..=FROZEN_RERUNS {
        if !run.frozen {
            break;
        }
        let frozen_log = log.with_extension(format!("frozen{attempt}.log"));
        let _ = std::fs::rename(log, &frozen_log);
        eprintln!(
            "nested: L1 FROZE after {:.0} s (its QEMU used no CPU for {FROZEN_AFTER:?}; console in {}): running L1 again ({attempt} of at most {FROZEN_RERUNS})",
            run.elapsed.as_secs_f64(),
            frozen_log.display()
        );
        run = self::run(make(), timeout.saturating_sub(started.elapsed()), log);
    }
    if run.frozen {
        eprintln!("nested: L1 froze again");
    }
    run
}

/// Runs `cmd` until QEMU exits or `timeout` passes. Console lines are saved to `log` as they
/// come, with their time; lines for the host (`NESTED `) are echoed to stderr at once.
pub fn run(mut cmd: Command, timeout: Duration, log: &Path) -> Run {
    let stderr_path = log.with_extension("stderr");
    let stderr = std::fs::File::create(&stderr_path).expect("create the qemu stderr file");
    let mut file = std::fs::File::create(log).expect("create the console log");
    let mut child = KillOnDrop(
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("start qemu-system-x86_64"),
    );
    let started = Instant::now();
    let stdout = child.0.stdout.take().expect("stdout is piped");
    let (tx, rx) = mpsc::channel::<Line>();
    let reader = std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf)
                        .trim_end_matches(['\n', '\r'])
                        .to_string();
                    if tx.send((started.elapsed().as_secs_f64(), line)).is_err() {
                        break;
                    }
                }
            }
        }
    });
    let mut lines = Vec::new();
    let deadline = started + timeout;
    let mut timed_out = false;
    let mut frozen = false;
    let pid = child.0.id();
    let mut last_cpu = (cpu_ticks(pid), Instant::now());
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left.min(Duration::from_secs(1))) {
            Ok((t, line)) => {
                let _ = writeln!(file, "[{t:8.3}] {line}");
                if let Some(at) = line.find("NESTED ") {
                    eprintln!("[{t:8.3}] {}", &line[at..]);
                }
                lines.push((t, line));
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if Instant::now() >= deadline {
                    timed_out = true;
                    let _ = child.0.kill();
                    break;
                }
            }
        }
        let cpu = cpu_ticks(pid);
        if cpu != last_cpu.0 || cpu.is_none() {
            last_cpu = (cpu, Instant::now());
        } else if last_cpu.1.elapsed() >= FROZEN_AFTER {
            frozen = true;
            let _ = child.0.kill();
            break;
        }
    }
    drop(child);
    let _ = reader.join();
    Run {
        lines,
        timed_out,
        frozen,
        elapsed: started.elapsed(),
        stderr: std::fs::read_to_string(&stderr_path).unwrap_or_default(),
    }
}

/// What the L1 console says.
#[derive(Debug, Default, PartialEq)]
pub struct Outcome {
    /// `NESTED PASS` was printed.
    pub pass: bool,
    /// The reasons of `NESTED FAIL` and `NESTED CLIENT FAIL` lines.
    pub failures: Vec<String>,
    /// Host time when L1's init started.
    pub l1_init_s: Option<f64>,
    /// Host time when L1 started rmachine-vmm.
    pub vmm_start_s: Option<f64>,
    /// The agent's first `pong`, in seconds after rmachine-vmm started (the client's clock).
    pub l2_ping_s: Option<f64>,
    /// The engine's `GET /version` answer, in seconds after rmachine-vmm started.
    pub l2_docker_version_s: Option<f64>,
    /// The guest read and wrote L1's shared folder (virtio-fs), seconds since the client started.
    pub l2_share_s: Option<f64>,
    /// Host time of `NESTED DONE`.
    pub done_s: Option<f64>,
}

fn timing(text: &str, key: &str) -> Option<f64> {
    let at = text.find(key)? + key.len();
    text[at..].split_whitespace().next()?.parse().ok()
}

/// Reads the `NESTED ` lines of a run.
pub fn parse(lines: &[Line]) -> Outcome {
    let mut o = Outcome::default();
    for (t, line) in lines {
        if line.starts_with("L2| ") || line.starts_with("VMM| ") {
            continue;
        }
        let Some(at) = line.find("NESTED ") else {
            continue;
        };
        let text = &line[at + "NESTED ".len()..];
        if text.trim_end() == "PASS" {
            o.pass = true;
        } else if let Some(why) = text
            .strip_prefix("FAIL ")
            .or_else(|| text.strip_prefix("CLIENT FAIL "))
        {
            o.failures.push(why.to_string());
        } else if text.starts_with("L1 init ") {
            o.l1_init_s.get_or_insert(*t);
        } else if text.starts_with("L1 starting rmachine-vmm") {
            o.vmm_start_s.get_or_insert(*t);
        } else if text.starts_with("DONE") {
            o.done_s.get_or_insert(*t);
        } else if text.starts_with("TIMING ") {
            if let Some(v) = timing(text, "l2_ping_s=") {
                o.l2_ping_s = Some(v);
            }
            if let Some(v) = timing(text, "l2_docker_version_s=") {
                o.l2_docker_version_s = Some(v);
            }
            if let Some(v) = timing(text, "l2_share_s=") {
                o.l2_share_s = Some(v);
            }
        }
    }
    o
}

/// One guest boot of the benchmark: a `NESTED BENCH label=<label> <key>=<seconds> …` line of
/// the client (`init_s`, `ping_s`, `engine_s`, `exit_s`: seconds since it started the VMM).
#[derive(Debug, Clone, PartialEq)]
pub struct BenchRun {
    /// `rmachine-vmm`, `qemu` or `warmup`.
    pub label: String,
    /// The timings, by key.
    pub seconds: BTreeMap<String, f64>,
}

/// The `NESTED BENCH` lines of a run, in order.
pub fn parse_bench(lines: &[Line]) -> Vec<BenchRun> {
    let mut runs = Vec::new();
    for (_, line) in lines {
        if line.starts_with("L2| ") || line.starts_with("VMM| ") {
            continue;
        }
        let Some(at) = line.find("NESTED BENCH ") else {
            continue;
        };
        let mut label = None;
        let mut seconds = BTreeMap::new();
        for word in line[at + "NESTED BENCH ".len()..].split_whitespace() {
            let Some((key, value)) = word.split_once('=') else {
                continue;
            };
            if key == "label" {
                label = Some(value.to_string());
            } else if let Ok(v) = value.parse() {
                seconds.insert(key.to_string(), v);
            }
        }
        if let Some(label) = label {
            runs.push(BenchRun { label, seconds });
        }
    }
    runs
}

/// The last `n` lines of `lines` that `keep` selects, without their time.
pub fn tail(lines: &[Line], n: usize, keep: impl Fn(&str) -> bool) -> String {
    let kept: Vec<&str> = lines
        .iter()
        .map(|(_, l)| l.as_str())
        .filter(|l| keep(l))
        .collect();
    kept[kept.len().saturating_sub(n)..].join("\n")
}

/// Where the console log of the test's last run is kept (`<target>/nested-vmm/`).
pub fn log_dir(target_dir: &Path) -> PathBuf {
    target_dir.join("nested-vmm")
}

#[cfg(test)]
mod tests {
    #[test]
    fn test_cpu_ticks_of_a_process_move_when_it_works() {
        let me = std::process::id();
        let before = cpu_ticks(me).expect("own /proc/PID/stat");
        let t = std::time::Instant::now();
        let mut x = 0u64;
        while t.elapsed() < Duration::from_millis(300) {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        assert!(x > 0);
        assert!(cpu_ticks(me).unwrap() > before);
        assert_eq!(cpu_ticks(u32::MAX), None);
    }

    use super::*;

    fn lines(text: &[(f64, &str)]) -> Vec<Line> {
        text.iter().map(|(t, l)| (*t, l.to_string())).collect()
    }

    #[test]
    fn test_parse_a_passing_run() {
        let run = lines(&[
            (0.1, "SeaBIOS (version 1.16.2)"),
            (5.2, "\x1bc\x1b[?7l\x1b[2JNESTED L1 init uptime=1.94"),
            (5.7, "NESTED L1 starting rmachine-vmm uptime=2.41"),
            (
                6.0,
                "NESTED ping attempt 1 at 0.021s: connect: No such file",
            ),
            (12.0, "NESTED TIMING l2_ping_s=6.357 (attempts 5)"),
            (
                13.0,
                "L2| NESTED FAIL this is the guest's console, not ours",
            ),
            (
                50.0,
                "NESTED TIMING l2_docker_version_s=45.324 (engine 26.1.5, attempts 48)",
            ),
            (52.0, "NESTED PASS"),
            (52.1, "NESTED DONE uptime=50.61"),
        ]);
        let o = parse(&run);
        assert!(o.pass);
        assert!(o.failures.is_empty(), "{:?}", o.failures);
        assert_eq!(o.l1_init_s, Some(5.2));
        assert_eq!(o.vmm_start_s, Some(5.7));
        assert_eq!(o.l2_ping_s, Some(6.357));
        assert_eq!(o.l2_docker_version_s, Some(45.324));
        assert_eq!(o.done_s, Some(52.1));
    }

    #[test]
    fn test_parse_bench_lines() {
        let run = lines(&[
            (5.0, "NESTED L1 run rmachine-vmm uptime=3.1"),
            (
                9.0,
                "NESTED BENCH label=rmachine-vmm init_s=2.500 ping_s=4.125 engine_s=36.000 exit_s=40.5",
            ),
            (9.5, "L2| NESTED BENCH label=guest init_s=1"),
            (60.0, "NESTED BENCH label=qemu init_s=3.25 engine_s=x"),
            (61.0, "NESTED BENCH init_s=1"),
        ]);
        let runs = parse_bench(&run);
        assert_eq!(runs.len(), 2);
        assert_eq!(runs[0].label, "rmachine-vmm");
        assert_eq!(runs[0].seconds["init_s"], 2.5);
        assert_eq!(runs[0].seconds["engine_s"], 36.0);
        assert_eq!(runs[0].seconds.len(), 4);
        assert_eq!(runs[1].label, "qemu");
        assert_eq!(runs[1].seconds.get("engine_s"), None);
    }

    #[test]
    fn test_parse_a_failing_run() {
        let run = lines(&[
            (5.0, "NESTED L1 init uptime=1.9"),
            (
                9.0,
                "NESTED CLIENT FAIL ping: rmachine-vmm (pid 116) exited after 3.600s",
            ),
            (9.5, "NESTED FAIL the client failed (status 1)"),
        ]);
        let o = parse(&run);
        assert!(!o.pass);
        assert_eq!(o.failures.len(), 2);
        assert!(o.failures[0].starts_with("ping: rmachine-vmm"));
        assert_eq!(o.l2_ping_s, None);
        assert_eq!(
            tail(&run, 1, |l| l.contains("FAIL")),
            "NESTED FAIL the client failed (status 1)"
        );
    }
}
