//! rmachine-vmm benchmark, on the KVM tests' freestanding guest (`vmm/vmm/tests/guest`) in its
//! bench modes (`rmtest.bench=boot|blk|vsock`). Every figure has a peer measured in the same run:
//!
//! - Start: process start to the first guest instruction (the vCPU thread's `vcpu running`
//!   debug line, logged right before its first KVM_RUN), to the guest's first serial byte (its
//!   first output, two port exits after its entry point) and to its `rmguest: ready` line
//!   (booted, disk driven, one read served), median of BENCH_RUNS, beside QEMU
//!   `-M microvm -accel kvm` booting the same guest code (linked with the PVH entry `pvh.S`, the
//!   only ELF entry QEMU takes) with the same disk, and beside a spawn and reap of `/bin/true`;
//!   also rmachine-vmm with `--no-seccomp` (runs alternating with the default, filtered ones),
//!   and the ratio of the two (the filters' cost).
//! - Memory: the VMM's resident memory minus the resident part of its guest-memory mapping,
//!   idle at the ready line (QEMU alike) and after the transfers below.
//! - vsock: guest → host (a listener on the hybrid socket's `<uds>_PORT`) and host → guest
//!   (`CONNECT PORT`), beside a unix socketpair moving the same bytes in 64 KiB writes; also
//!   how busy the VMM's vCPU and device threads were (on a nested hypervisor the guest's own
//!   instructions can be the bottleneck).
//! - virtio-blk: sequential write plus flush, then two sequential reads, in 1 MiB requests
//!   with four in flight. Before the first read the image leaves the host's page cache
//!   (fdatasync, POSIX_FADV_DONTNEED); the second read is served from it. The peer does the
//!   same pwrites, fdatasync and preads on a host file of the same size, treated alike, each
//!   pass right before the guest's (right after it in odd runs; the guest waits on its serial
//!   line meanwhile).
//!
//! - Snapshots: a VM held at its ready line is snapshotted (`PUT /vm/snapshot`): the time the
//!   API takes, the memory file's data and the state file's size; then rmachine-vmm started
//!   with `--restore` to the guest's first line after the restore (it was waiting for a byte
//!   on COM1, written at once), beside a cold boot of the same configuration to its ready
//!   line, interleaved, median of BENCH_RUNS.
//! - Another VMM (`BENCH_FIRECRACKER=path` to a Firecracker binary, when one is installed):
//!   the same start and memory figures on the same guest and disk (`--no-api
//!   --config-file`), its ratio against rmachine-vmm in the same run.
//!
//! `cargo run --profile benchmark -p rmachine-bench --bin vmm`
//! (BENCH_RUNS=20 starts, BENCH_START_ONLY=1 stops after them, BENCH_XFER_RUNS=5 transfer runs, BENCH_VSOCK_MIB=256,
//! BENCH_BLK_MIB=64, BENCH_BLK_REQ_KIB=1024; RMACHINE_VMM_BIN=path skips building
//! rmachine-vmm; BENCH_QEMU=0 skips the QEMU peer; BENCH_SNAPSHOT=0 skips the snapshot part,
//! BENCH_SNAPSHOT_ONLY=1 runs only it; BENCH_FIRECRACKER=path adds Firecracker;
//! BENCH_VMM_ALT=path adds another build of rmachine-vmm, e.g. a static musl one, measured
//! interleaved with the first for start and memory).

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use nix::fcntl::{posix_fadvise, PosixFadviseAdvice};
use rmachine_bench::{build_benchmark_profile, env_num, median, workspace_root};
use serde_json::json;

/// Bound on anything a guest does; only catches hangs.
const TIMEOUT: Duration = Duration::from_secs(120);
/// Guest memory of every VM (bench buffers lie from 32 MiB up).
const GUEST_MIB: u64 = 128;
/// Write size of the socket transfers (a vsock packet's largest payload).
const CHUNK: usize = 64 * 1024;
/// Ports of the vsock bench.
const G2H_PORT: u32 = 5000;
const H2G_PORT: u32 = 6000;

/// `rmachine-vmm` of the `benchmark` profile, built now, or RMACHINE_VMM_BIN.
fn vmm_binary() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("RMACHINE_VMM_BIN") {
        return Ok(PathBuf::from(path));
    }
    build_benchmark_profile("rmachine-vmm").map_err(anyhow::Error::msg)?;
    let exe = std::env::current_exe().context("own path")?;
    let bin = exe.parent().context("own folder")?.join("rmachine-vmm");
    ensure!(bin.is_file(), "{} was not built", bin.display());
    Ok(bin)
}

/// Builds the test guest with the tests' own script; `extra` are more sources or flags.
fn build_guest(out: &Path, extra: &[&str]) -> Result<PathBuf> {
    let src = workspace_root().join("vmm/vmm/tests/guest");
    let status = Command::new("sh")
        .arg(src.join("build.sh"))
        .arg(out)
        .args(extra.iter().map(|e| {
            if e.starts_with('-') {
                e.to_string()
            } else {
                src.join(e).display().to_string()
            }
        }))
        .status()
        .context("run the guest's build.sh (needs gcc and binutils)")?;
    ensure!(
        status.success(),
        "building the test guest {} failed",
        out.display()
    );
    Ok(out.to_path_buf())
}

/// One line of a guest's console: when its first byte and its newline arrived.
#[derive(Clone)]
struct Line {
    begin: Instant,
    end: Instant,
    text: String,
}

/// Everything a guest printed so far.
#[derive(Default)]
struct Console {
    first_byte: Option<Instant>,
    lines: Vec<Line>,
    partial: Vec<u8>,
    partial_begin: Option<Instant>,
    closed: bool,
}

impl Console {
    fn dump(&self) -> String {
        let mut s: String = self.lines.iter().map(|l| format!("{}\n", l.text)).collect();
        s.push_str(&String::from_utf8_lossy(&self.partial));
        s
    }
}

/// Reads a VM's serial output (its stdout), stamping each byte on arrival.
fn read_console(mut out: impl Read + Send + 'static) -> Arc<Mutex<Console>> {
    let console = Arc::new(Mutex::new(Console::default()));
    let shared = console.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        loop {
            let n = match out.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let now = Instant::now();
            let mut c = shared.lock().expect("console lock");
            c.first_byte.get_or_insert(now);
            for &b in &buf[..n] {
                if c.partial.is_empty() {
                    c.partial_begin = Some(now);
                }
                if b == b'\n' {
                    let text = String::from_utf8_lossy(&c.partial).into_owned();
                    let begin = c.partial_begin.take().unwrap_or(now);
                    c.lines.push(Line {
                        begin,
                        end: now,
                        text,
                    });
                    c.partial.clear();
                } else {
                    c.partial.push(b);
                }
            }
        }
        shared.lock().expect("console lock").closed = true;
    });
    console
}

/// A running VM process (rmachine-vmm or QEMU), its serial console on stdin and stdout.
/// Dropping it kills the process; it also dies with this one (PR_SET_PDEATHSIG).
struct Vm {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    console: Arc<Mutex<Console>>,
    started: Instant,
    /// Wall clock at `started`, to place the VMM's log timestamps.
    started_wall: std::time::SystemTime,
    log: PathBuf,
    cursor: usize,
}

impl Vm {
    fn spawn(name: &str, mut cmd: Command, log: PathBuf) -> Result<Vm> {
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(File::create(&log)?);
        // SAFETY: the closure runs in the child between fork and exec and only calls prctl(2),
        // which is async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                    .map_err(std::io::Error::from)
            });
        }
        let started_wall = std::time::SystemTime::now();
        let started = Instant::now();
        let mut child = cmd.spawn().with_context(|| format!("start {name}"))?;
        let stdout = child.stdout.take().context("piped stdout")?;
        let stdin = child.stdin.take();
        Ok(Vm {
            name: name.to_string(),
            child,
            stdin,
            console: read_console(stdout),
            started,
            started_wall,
            log,
            cursor: 0,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Process start to the VMM's log line containing `message` (from its UTC timestamp).
    fn log_time(&self, message: &str) -> Option<Duration> {
        let log = std::fs::read_to_string(&self.log).ok()?;
        let line = strip_ansi(log.lines().find(|l| l.contains(message))?);
        // "2026-11-30T11:34:29.165352Z ..." → seconds into the day, as the spawn time.
        let time = line
            .split_whitespace()
            .next()?
            .split_once('T')?
            .1
            .trim_end_matches('Z')
            .to_string();
        let mut parts = time.split(':');
        let (h, m, sec): (f64, f64, f64) = (
            parts.next()?.parse().ok()?,
            parts.next()?.parse().ok()?,
            parts.next()?.parse().ok()?,
        );
        let logged = h * 3600.0 + m * 60.0 + sec;
        let spawned = self
            .started_wall
            .duration_since(std::time::UNIX_EPOCH)
            .ok()?
            .as_secs_f64()
            % 86400.0;
        Some(Duration::from_secs_f64(
            (logged - spawned).rem_euclid(86400.0),
        ))
    }

    /// CPU time so far of the process's thread named `name` (from its schedstat, in ns).
    fn thread_cpu(&self, name: &str) -> Option<Duration> {
        for task in std::fs::read_dir(format!("/proc/{}/task", self.pid()))
            .ok()?
            .flatten()
        {
            if std::fs::read_to_string(task.path().join("comm"))
                .ok()?
                .trim()
                == name
            {
                let stat = std::fs::read_to_string(task.path().join("schedstat")).ok()?;
                return stat
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
                    .map(Duration::from_nanos);
            }
        }
        None
    }

    fn first_byte(&self) -> Option<Instant> {
        self.console.lock().expect("console lock").first_byte
    }

    fn failure(&self, what: String) -> anyhow::Error {
        let console = self.console.lock().expect("console lock").dump();
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(15).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        anyhow::anyhow!(
            "{}: {what}\nconsole:\n{console}\nlog (end):\n{}",
            self.name,
            tail.join("\n")
        )
    }

    /// Waits for the next line starting with `prefix`, after the last one waited for.
    fn wait_line(&mut self, prefix: &str) -> Result<Line> {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let mut closed = false;
            let mut failed = None;
            {
                let c = self.console.lock().expect("console lock");
                for (i, l) in c.lines.iter().enumerate().skip(self.cursor) {
                    if l.text.starts_with("rmguest: FAIL") {
                        failed = Some(l.text.clone());
                        break;
                    }
                    if l.text.starts_with(prefix) {
                        self.cursor = i + 1;
                        return Ok(l.clone());
                    }
                }
                closed |= c.closed;
            }
            if let Some(line) = failed {
                return Err(self.failure(format!("{line} before {prefix:?}")));
            }
            if closed {
                return Err(self.failure(format!("console closed before {prefix:?}")));
            }
            if Instant::now() > deadline {
                return Err(self.failure(format!("timed out waiting for {prefix:?}")));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// One byte on the guest's COM1: releases an `rmguest: bench waiting` point.
    fn poke(&mut self) -> Result<()> {
        let stdin = self.stdin.as_mut().context("stdin")?;
        stdin.write_all(b"g")?;
        stdin.flush()?;
        Ok(())
    }

    /// Waits for the VMM to exit with status 0 (the guest resets at its end).
    fn wait_exit(&mut self) -> Result<()> {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                if !status.success() {
                    return Err(self.failure(format!("exited with {status}")));
                }
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(self.failure("did not exit".to_string()));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Busy fraction of the VMM's vCPU and device threads over a timed window.
#[derive(Clone, Copy)]
struct Busy {
    vcpu: f64,
    devices: f64,
}

/// CPU time of the two threads at a moment; [`CpuMark::finish`] turns it into a [`Busy`].
struct CpuMark(Instant, Option<Duration>, Option<Duration>);

impl CpuMark {
    fn new(vm: &Vm) -> CpuMark {
        CpuMark(
            Instant::now(),
            vm.thread_cpu("vcpu0"),
            vm.thread_cpu("devices"),
        )
    }

    fn finish(&self, vm: &Vm) -> Busy {
        let wall = self.0.elapsed().as_secs_f64();
        let frac = |a: Option<Duration>, b: Option<Duration>| match (a, b) {
            (Some(a), Some(b)) => b.saturating_sub(a).as_secs_f64() / wall,
            _ => f64::NAN,
        };
        Busy {
            vcpu: frac(self.1, vm.thread_cpu("vcpu0")),
            devices: frac(self.2, vm.thread_cpu("devices")),
        }
    }
}

/// Paths shared by every run.
struct Setup {
    vmm: PathBuf,
    guest: PathBuf,
    guest_pvh: PathBuf,
    dir: tempfile::TempDir,
}

impl Setup {
    /// Starts rmachine-vmm on the test guest with `cmdline` (rmtest keys) and `devices` (JSON
    /// object merged into the config).
    fn rmachine(&self, name: &str, cmdline: &str, devices: serde_json::Value) -> Result<Vm> {
        self.rmachine_with_args(name, cmdline, devices, &[])
    }

    /// [`Setup::rmachine`] with more command-line arguments.
    fn rmachine_with_args(
        &self,
        name: &str,
        cmdline: &str,
        devices: serde_json::Value,
        args: &[&str],
    ) -> Result<Vm> {
        self.rmachine_bin(&self.vmm, name, cmdline, devices, args)
    }

    /// [`Setup::rmachine_with_args`] with another rmachine-vmm binary.
    fn rmachine_bin(
        &self,
        bin: &Path,
        name: &str,
        cmdline: &str,
        devices: serde_json::Value,
        args: &[&str],
    ) -> Result<Vm> {
        let mut config = json!({
            "memory_mib": GUEST_MIB,
            "kernel": {"path": self.guest, "cmdline": format!("console=ttyS0 reboot=k {cmdline}")},
            "serial": {"stdio": true},
        });
        if let (Some(c), Some(d)) = (config.as_object_mut(), devices.as_object()) {
            c.extend(d.clone());
        }
        let path = self.dir.path().join(format!("{name}.json"));
        std::fs::write(&path, serde_json::to_vec_pretty(&config)?)?;
        let mut cmd = Command::new(bin);
        // The default level, plus the vCPU thread's one debug line (its start).
        cmd.args(args)
            .arg("--config")
            .arg(&path)
            .env("RUST_LOG", "info,vmm::vcpu=debug");
        Vm::spawn(name, cmd, self.dir.path().join(format!("{name}.log")))
    }

    /// Starts QEMU microvm on the PVH build of the same guest, with `disk` as its virtio-blk.
    fn qemu(&self, cmdline: &str, disk: &Path) -> Result<Vm> {
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args(["-M", "microvm,acpi=off", "-accel", "kvm", "-smp", "1", "-m"])
            .arg(GUEST_MIB.to_string())
            .args([
                "-nodefaults",
                "-no-user-config",
                "-display",
                "none",
                "-serial",
                "stdio",
                "-monitor",
                "none",
            ])
            .args([
                "-global",
                "virtio-mmio.force-legacy=false",
                "-no-reboot",
                "-kernel",
            ])
            .arg(&self.guest_pvh)
            .arg("-append")
            .arg(format!("console=ttyS0 reboot=k {cmdline}"))
            .arg("-drive")
            .arg(format!(
                "id=data,file={},format=raw,if=none",
                disk.display()
            ))
            .args(["-device", "virtio-blk-device,drive=data,serial=data"]);
        Vm::spawn("qemu", cmd, self.dir.path().join("qemu.log"))
    }

    /// Starts Firecracker (`BENCH_FIRECRACKER`) on the same guest and disk, without its API.
    fn firecracker(&self, bin: &Path, cmdline: &str, disk: &Path) -> Result<Vm> {
        let config = json!({
            "boot-source": {
                "kernel_image_path": self.guest,
                "boot_args": format!("console=ttyS0 reboot=k {cmdline}"),
            },
            "drives": [{
                "drive_id": "data",
                "path_on_host": disk,
                "is_root_device": false,
                "is_read_only": false,
            }],
            "machine-config": {"vcpu_count": 1, "mem_size_mib": GUEST_MIB},
        });
        let path = self.dir.path().join("firecracker.json");
        std::fs::write(&path, serde_json::to_vec_pretty(&config)?)?;
        // Its log goes to a file, so stdout carries only the guest's console.
        let log = self.dir.path().join("firecracker-log.txt");
        File::create(&log)?;
        let mut cmd = Command::new(bin);
        cmd.arg("--no-api")
            .arg("--config-file")
            .arg(&path)
            .arg("--log-path")
            .arg(&log);
        Vm::spawn(
            "firecracker",
            cmd,
            self.dir.path().join("firecracker.stderr"),
        )
    }

    fn disk(&self, name: &str, mib: u64) -> Result<PathBuf> {
        let path = self.dir.path().join(name);
        let _ = std::fs::remove_file(&path);
        File::create(&path)?.set_len(mib << 20)?;
        Ok(path)
    }
}

/// Process start to the first serial byte and to the ready line; for rmachine-vmm also to the
/// first guest instruction: its vCPU thread logs "vcpu running" right before the first KVM_RUN.
struct Start {
    first: Duration,
    ready: Duration,
    vcpu_running: Option<Duration>,
}

/// Iterations of the guest's spin loop (`rmtest.bench=spin`, three instructions each).
const SPIN_ITERATIONS: u64 = 100_000;

/// Nanoseconds per iteration of the guest's spin loop, timed between its two lines.
fn spin_once(vm: &mut Vm) -> Result<f64> {
    let start = vm.wait_line("rmguest: bench spin start")?.end;
    let done = vm.wait_line("rmguest: bench spin done")?.begin;
    Ok((done - start).as_secs_f64() * 1e9 / SPIN_ITERATIONS as f64)
}

/// The same loop natively (its counter through `black_box`, so a few instructions more).
fn spin_native() -> f64 {
    let t = Instant::now();
    for i in 0..SPIN_ITERATIONS * 100 {
        std::hint::black_box(i);
    }
    t.elapsed().as_secs_f64() * 1e9 / (SPIN_ITERATIONS * 100) as f64
}

fn start_once(vm: &mut Vm) -> Result<Start> {
    let ready = vm.wait_line("rmguest: ready")?;
    let first = vm.first_byte().context("ready line without a first byte")?;
    Ok(Start {
        first: first - vm.started,
        ready: ready.end - vm.started,
        vcpu_running: vm.log_time("vcpu running"),
    })
}

/// Resident memory of a process, KiB: (all of it, its mapping of `guest_kib` guest memory).
fn rss_split(pid: u32, guest_kib: u64) -> Result<(u64, u64)> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).context("read smaps")?;
    let kib = |v: &str| {
        v.trim()
            .trim_end_matches("kB")
            .trim()
            .parse::<u64>()
            .unwrap_or(0)
    };
    let (mut total, mut guest, mut size) = (0, None, 0);
    for line in smaps.lines() {
        if let Some(v) = line.strip_prefix("Size:") {
            size = kib(v);
        } else if let Some(v) = line.strip_prefix("Rss:") {
            let rss = kib(v);
            total += rss;
            // QEMU reserves its RAM block with a little alignment slack.
            if (guest_kib..=guest_kib + 4096).contains(&size) {
                guest = Some(guest.unwrap_or(0).max(rss));
            }
        }
    }
    Ok((total, guest.context("no guest-memory mapping in smaps")?))
}

/// Private (not shared with other processes: anonymous, dirty or own) resident KiB of a
/// process outside its guest-memory mapping of `guest_kib`.
fn private_kib(pid: u32, guest_kib: u64) -> Result<u64> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).context("read smaps")?;
    let kib = |v: &str| {
        v.trim()
            .trim_end_matches("kB")
            .trim()
            .parse::<u64>()
            .unwrap_or(0)
    };
    let (mut private, mut size) = (0, 0);
    for line in smaps.lines() {
        if let Some(v) = line.strip_prefix("Size:") {
            size = kib(v);
        } else if let Some(v) = line
            .strip_prefix("Private_Clean:")
            .or_else(|| line.strip_prefix("Private_Dirty:"))
        {
            if !(guest_kib..=guest_kib + 4096).contains(&size) {
                private += kib(v);
            }
        }
    }
    Ok(private)
}

/// Memory beyond guest RAM, idle at the ready line: rmachine-vmm (with its private part) and
/// Firecracker when given.
fn idle_overhead(
    s: &Setup,
    disk: &Path,
    firecracker: Option<&Path>,
    alt: Option<&Path>,
    table: &mut Table,
) -> Result<()> {
    let held = "rmtest.bench=boot rmtest.sync=1";
    let mut bins = vec![s.vmm.clone()];
    bins.extend(alt.map(Path::to_path_buf));
    let mut firsts = Vec::new();
    for bin in &bins {
        let mut samples = Vec::new();
        for _ in 0..3 {
            let mut vm = s.rmachine_bin(
                bin,
                "idle",
                held,
                json!({"disks": [{"id": "data", "path": disk}]}),
                &[],
            )?;
            vm.wait_line("rmguest: bench waiting ready")?;
            let (over, _) = overhead(&vm)?;
            let private = private_kib(vm.pid(), GUEST_MIB * 1024)?;
            vm.poke()?;
            vm.wait_exit()?;
            samples.push((over, private));
        }
        samples.sort();
        let (over, private) = samples[samples.len() / 2];
        table.row(
            format!(
                "rmachine-vmm ({}): RSS − touched guest memory, idle at ready (median of 3)",
                bin.display()
            ),
            format!(
                "{} ({} of it private, the rest shared file pages)",
                mib(over),
                mib(private)
            ),
        );
        firsts.push(over);
    }
    if let [a, b] = firsts[..] {
        table.row(
            "memory overhead, the other build / the first",
            format!("{:.2}×", b as f64 / a as f64),
        );
    }
    let rm_over = firsts[0];
    if let Some(bin) = firecracker {
        let mut vm = s.firecracker(bin, held, disk)?;
        vm.wait_line("rmguest: bench waiting ready")?;
        let (over, _) = overhead(&vm)?;
        let private = private_kib(vm.pid(), GUEST_MIB * 1024)?;
        drop(vm);
        table.row(
            "Firecracker (peer): RSS − touched guest memory, idle at ready",
            format!("{} ({} private)", mib(over), mib(private)),
        );
        table.row(
            "memory overhead, rmachine-vmm / Firecracker",
            format!("{:.2}×", rm_over as f64 / over as f64),
        );
    }
    Ok(())
}

/// VMM overhead at a held point: (resident KiB minus resident guest memory, guest KiB touched).
fn overhead(vm: &Vm) -> Result<(u64, u64)> {
    std::thread::sleep(Duration::from_millis(200));
    let (total, guest) = rss_split(vm.pid(), GUEST_MIB * 1024)?;
    Ok((total - guest, guest))
}

fn send(s: &mut UnixStream, bytes: u64) -> std::io::Result<()> {
    let chunk = vec![0x5au8; CHUNK];
    let mut sent = 0;
    while sent < bytes {
        let n = CHUNK.min((bytes - sent) as usize);
        s.write_all(&chunk[..n])?;
        sent += n as u64;
    }
    Ok(())
}

fn drain(s: &mut UnixStream) -> std::io::Result<u64> {
    let mut buf = vec![0u8; CHUNK];
    let mut got = 0;
    loop {
        match s.read(&mut buf)? {
            0 => return Ok(got),
            n => got += n as u64,
        }
    }
}

fn mibps(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / 1048576.0 / d.as_secs_f64()
}

/// One vsock VM's figures.
struct Vsock {
    g2h: f64,
    h2g: f64,
    g2h_busy: Busy,
    h2g_busy: Busy,
    overhead_kib: u64,
}

/// One vsock VM: both directions (MiB/s), thread loads, the overhead after both.
fn vsock_once(s: &Setup, mib: u64) -> Result<Vsock> {
    let bytes = mib << 20;
    let uds = s.dir.path().join("v.sock");
    let g2h_path = PathBuf::from(format!("{}_{G2H_PORT}", uds.display()));
    let _ = std::fs::remove_file(&uds);
    let _ = std::fs::remove_file(&g2h_path);
    let listener = UnixListener::bind(&g2h_path)?;
    listener.set_nonblocking(true)?;
    let cmdline =
        format!("rmtest.bench=vsock rmtest.bench_mib={mib} rmtest.g2h={G2H_PORT} rmtest.h2g={H2G_PORT} rmtest.sync=1");
    let mut vm = s.rmachine(
        "vsock",
        &cmdline,
        json!({"vsock": {"guest_cid": 3, "uds_path": uds}}),
    )?;

    // Guest → host: from the VMM's connection to the end of the stream.
    let deadline = Instant::now() + TIMEOUT;
    let mut stream = loop {
        match listener.accept() {
            Ok((stream, _)) => break stream,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() > deadline || vm.child.try_wait()?.is_some() {
                    return Err(vm.failure("no guest connection".to_string()));
                }
                std::thread::sleep(Duration::from_micros(50));
            }
            Err(e) => return Err(e.into()),
        }
    };
    let t = Instant::now();
    let mark = CpuMark::new(&vm);
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    let got = drain(&mut stream)?;
    let g2h = t.elapsed();
    let g2h_busy = mark.finish(&vm);
    ensure!(got == bytes, "guest → host: {got} bytes of {bytes}");
    drop(stream);
    vm.wait_line("rmguest: bench vsock g2h sent")?;

    // Host → guest: from the VMM's OK to the guest's one-byte answer after the last byte.
    vm.wait_line(&format!("rmguest: bench vsock listening {H2G_PORT}"))?;
    let mut stream = UnixStream::connect(&uds)?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    stream.write_all(format!("CONNECT {H2G_PORT}\n").as_bytes())?;
    let mut ok = Vec::new();
    let mut b = [0u8; 1];
    while b[0] != b'\n' {
        stream.read_exact(&mut b)?;
        ok.push(b[0]);
    }
    ensure!(
        ok.starts_with(b"OK "),
        "CONNECT answered {:?}",
        String::from_utf8_lossy(&ok)
    );
    let t = Instant::now();
    let mark = CpuMark::new(&vm);
    send(&mut stream, bytes)?;
    stream.read_exact(&mut b)?;
    let h2g = t.elapsed();
    let h2g_busy = mark.finish(&vm);
    ensure!(b == *b"k", "host → guest: wrong answer {b:?}");
    drop(stream);
    vm.wait_line("rmguest: bench vsock h2g received")?;
    vm.wait_line("rmguest: bench waiting vsock done")?;
    let (over, _) = overhead(&vm)?;
    vm.poke()?;
    vm.wait_exit()?;
    Ok(Vsock {
        g2h: mibps(bytes, g2h),
        h2g: mibps(bytes, h2g),
        g2h_busy,
        h2g_busy,
        overhead_kib: over,
    })
}

/// The peer: the same bytes through a unix socketpair, writer and reader threads.
fn socketpair_once(mib: u64) -> Result<f64> {
    let bytes = mib << 20;
    let (mut a, mut b) = UnixStream::pair()?;
    let t = Instant::now();
    let writer = std::thread::spawn(move || send(&mut a, bytes));
    let got = drain(&mut b)?;
    writer
        .join()
        .map_err(|_| anyhow::anyhow!("writer panicked"))??;
    let d = t.elapsed();
    ensure!(got == bytes, "socketpair: {got} bytes of {bytes}");
    Ok(mibps(bytes, d))
}

/// Write (with flush), cold read, warm read, MiB/s.
struct Blk {
    write: f64,
    cold: f64,
    warm: f64,
}

/// Flushes a file and drops it from the host's page cache.
fn drop_cache(path: &Path) -> Result<()> {
    let f = OpenOptions::new().read(true).write(true).open(path)?;
    f.sync_data()?;
    posix_fadvise(f.as_raw_fd(), 0, 0, PosixFadviseAdvice::POSIX_FADV_DONTNEED)?;
    Ok(())
}

/// The peer: the same requests with pwrite/pread on a host file of the same size.
struct HostFile {
    path: PathBuf,
    file: File,
    buf: Vec<u8>,
    bytes: u64,
}

impl HostFile {
    fn new(s: &Setup, mib: u64, req_kib: u64) -> Result<HostFile> {
        let path = s.disk("host.img", mib)?;
        let file = OpenOptions::new().read(true).write(true).open(&path)?;
        let buf = vec![0x5au8; (req_kib << 10) as usize];
        Ok(HostFile {
            path,
            file,
            buf,
            bytes: mib << 20,
        })
    }

    /// Writes the whole file in requests, then fdatasync; MiB/s.
    fn write(&mut self) -> Result<f64> {
        let t = Instant::now();
        for off in (0..self.bytes).step_by(self.buf.len()) {
            self.file.write_all_at(&self.buf, off)?;
        }
        self.file.sync_data()?;
        Ok(mibps(self.bytes, t.elapsed()))
    }

    /// Reads the whole file in requests; MiB/s.
    fn read(&mut self) -> Result<f64> {
        let t = Instant::now();
        for off in (0..self.bytes).step_by(self.buf.len()) {
            self.file.read_exact_at(&mut self.buf, off)?;
        }
        Ok(mibps(self.bytes, t.elapsed()))
    }
}

/// One blk VM and its peer, each pass of the peer right before the guest's (`host_first`) or
/// right after it, the other file waiting alike: (guest, host) figures and the VMM's overhead.
fn blk_once(s: &Setup, mib: u64, req_kib: u64, host_first: bool) -> Result<(Blk, Blk, u64)> {
    let bytes = mib << 20;
    let disk = s.disk("blk.img", mib)?;
    let mut host = HostFile::new(s, mib, req_kib)?;
    let cmdline = format!(
        "rmtest.bench=blk rmtest.bench_mib={mib} rmtest.bench_req_kib={req_kib} rmtest.sync=1"
    );
    let mut vm = s.rmachine(
        "blk",
        &cmdline,
        json!({"disks": [{"id": "data", "path": disk}]}),
    )?;
    let pass = |vm: &mut Vm, what: &str| -> Result<f64> {
        vm.poke()?;
        let start = vm
            .wait_line(&format!("rmguest: bench blk {what} start"))?
            .end;
        let done = vm
            .wait_line(&format!("rmguest: bench blk {what} done"))?
            .begin;
        Ok(mibps(bytes, done - start))
    };
    // Each step: the peer's pass, the guest's pass, in the order asked; the guest waits on its
    // serial line at the next point meanwhile.
    let step = |vm: &mut Vm, what: &str, next: &str, host_pass: &mut dyn FnMut() -> Result<f64>| {
        let host_before = if host_first { Some(host_pass()?) } else { None };
        let guest = pass(vm, what)?;
        vm.wait_line(&format!("rmguest: bench waiting blk {next}"))?;
        let host = match host_before {
            Some(host) => host,
            None => host_pass()?,
        };
        anyhow::Ok((guest, host))
    };
    vm.wait_line("rmguest: bench waiting blk write")?;
    let (write, host_write) = step(&mut vm, "write", "read", &mut || host.write())?;
    drop_cache(&disk)?;
    drop_cache(&host.path)?;
    let (cold, host_cold) = step(&mut vm, "read", "read", &mut || host.read())?;
    let (warm, host_warm) = step(&mut vm, "read", "done", &mut || host.read())?;
    let (over, _) = overhead(&vm)?;
    vm.poke()?;
    vm.wait_exit()?;
    let guest = Blk { write, cold, warm };
    let host = Blk {
        write: host_write,
        cold: host_cold,
        warm: host_warm,
    };
    Ok((guest, host, over))
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn fmedian(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The result table, printed as markdown at the end.
/// One HTTP/1.1 request over the VMM's API socket; (status, body).
fn api(socket: &Path, method: &str, path: &str, body: &str) -> Result<(u16, String)> {
    let mut s = UnixStream::connect(socket).context("connect to the api")?;
    s.set_read_timeout(Some(TIMEOUT))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut response = String::new();
    s.read_to_string(&mut response)?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    Ok((status, body))
}

/// Snapshot figures of one VM.
struct SnapshotSample {
    /// `PUT /vm/snapshot` round trip.
    wall: Duration,
    /// The VMM's own total.
    total_ms: f64,
    data_bytes: u64,
    allocated_bytes: u64,
    state_bytes: u64,
}

/// Boots the guest to its ready line (held there), snapshots it into `dir`, powers it off.
fn snapshot_once(s: &Setup, disk: &Path, dir: &Path) -> Result<SnapshotSample> {
    let socket = s.dir.path().join("snap-api.sock");
    let mut vm = s.rmachine(
        "snap",
        "rmtest.bench=boot rmtest.sync=1",
        json!({"disks": [{"id": "data", "path": disk}], "api_socket": socket}),
    )?;
    vm.wait_line("rmguest: bench waiting ready")?;
    let _ = std::fs::remove_dir_all(dir);
    let t = Instant::now();
    let (status, body) = api(
        &socket,
        "PUT",
        "/vm/snapshot",
        &json!({ "dir": dir }).to_string(),
    )?;
    let wall = t.elapsed();
    ensure!(status == 200, "snapshot answered {status}: {body}");
    let info: serde_json::Value = serde_json::from_str(&body)?;
    let (status, _) = api(&socket, "PUT", "/vm/poweroff", "")?;
    ensure!(status == 202, "poweroff answered {status}");
    vm.wait_exit()?;
    use std::os::unix::fs::MetadataExt;
    let allocated_bytes = std::fs::metadata(dir.join("memory"))?.blocks() * 512;
    Ok(SnapshotSample {
        wall,
        total_ms: info["total_ms"].as_f64().unwrap_or(f64::NAN),
        data_bytes: info["memory_data_bytes"].as_u64().unwrap_or(0),
        allocated_bytes,
        state_bytes: info["state_bytes"].as_u64().unwrap_or(0),
    })
}

/// Starts rmachine-vmm from the snapshot in `dir` and times it to the guest's first line after
/// the restore (the guest waited for a byte on COM1, written at once).
fn restore_once(s: &Setup, disk: &Path, dir: &Path) -> Result<(Duration, Vm)> {
    let socket = s.dir.path().join("snap-api.sock");
    let mut vm = s.rmachine_with_args(
        "restore",
        "rmtest.bench=boot rmtest.sync=1",
        json!({"disks": [{"id": "data", "path": disk}], "api_socket": socket}),
        &["--restore", dir.to_str().context("utf-8 path")?],
    )?;
    vm.poke()?;
    let line = vm.wait_line("rmguest: all ok")?;
    Ok((line.end - vm.started, vm))
}

/// The snapshot part: sizes, snapshot time, restore against a cold boot.
fn snapshot_section(s: &Setup, runs: usize, table: &mut Table) -> Result<()> {
    let disk = s.disk("snap.img", 64)?;
    let dir = s.dir.path().join("snapshot");
    let snap_runs = runs.clamp(1, 5);
    let mut snaps = Vec::new();
    for _ in 0..snap_runs {
        snaps.push(snapshot_once(s, &disk, &dir)?);
    }
    let (mut restored, mut cold, mut restored_over) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..runs {
        let cold_first = i % 2 == 1;
        if cold_first {
            cold.push(cold_boot(s, &disk)?);
        }
        let (t, mut vm) = restore_once(s, &disk, &dir)?;
        restored.push(t);
        if i == 0 {
            // The restored VM's own overhead, once (it resets right after its line).
            if let Ok((total, guest)) = rss_split(vm.pid(), GUEST_MIB * 1024) {
                restored_over.push((total - guest, guest));
            }
        }
        vm.wait_exit()?;
        drop(vm);
        if !cold_first {
            cold.push(cold_boot(s, &disk)?);
        }
        eprintln!("snapshot {i}: restore {} cold {}", ms(t), ms(cold[i]));
    }
    let last = snaps.last().context("a snapshot")?;
    table.row(
        format!("snapshot of the guest held at ready: `PUT /vm/snapshot` round trip (median of {snap_runs})"),
        format!(
            "{} (the VMM's own total {:.2} ms)",
            ms(median(snaps.iter().map(|x| x.wall).collect())),
            {
                let mut t: Vec<f64> = snaps.iter().map(|x| x.total_ms).collect();
                t.sort_by(|a, b| a.total_cmp(b));
                t[t.len() / 2]
            }
        ),
    );
    table.row(
        "snapshot size: memory file data / allocated / apparent; state file",
        format!(
            "{} / {} / {} MiB; {:.1} KiB",
            mib(last.data_bytes / 1024),
            mib(last.allocated_bytes / 1024),
            GUEST_MIB,
            last.state_bytes as f64 / 1024.0
        ),
    );
    let r = median(restored);
    let c = median(cold);
    table.row(
        format!(
            "restore → guest running again (its first line after the restore; median of {runs})"
        ),
        ms(r),
    );
    table.row(
        "cold boot of the same configuration → `rmguest: ready` (peer)",
        ms(c),
    );
    table.row(
        "restore / cold boot",
        format!("{:.2}×", r.as_secs_f64() / c.as_secs_f64()),
    );
    if let Some((over, guest)) = restored_over.first() {
        table.row(
            "restored VM: RSS − touched guest memory",
            format!("{} (guest memory read back {})", mib(*over), mib(*guest)),
        );
    }
    Ok(())
}

/// A cold boot of the snapshot part's configuration to its ready line.
fn cold_boot(s: &Setup, disk: &Path) -> Result<Duration> {
    let socket = s.dir.path().join("cold-api.sock");
    let mut vm = s.rmachine(
        "cold",
        "rmtest.bench=boot rmtest.sync=1",
        json!({"disks": [{"id": "data", "path": disk}], "api_socket": socket}),
    )?;
    let line = vm.wait_line("rmguest: ready")?;
    vm.wait_line("rmguest: bench waiting ready")?;
    vm.poke()?;
    vm.wait_exit()?;
    Ok(line.end - vm.started)
}

#[derive(Default)]
struct Table(Vec<(String, String)>);

impl Table {
    fn row(&mut self, what: impl Into<String>, figure: impl Into<String>) {
        let (what, figure) = (what.into(), figure.into());
        eprintln!("{what}: {figure}");
        self.0.push((what, figure));
    }

    fn print(&self) {
        println!("| what | figure |\n| --- | --- |");
        for (what, figure) in &self.0 {
            println!("| {what} | {figure} |");
        }
    }
}

fn main() -> Result<()> {
    let runs = env_num("BENCH_RUNS", 20) as usize;
    let xfer_runs = env_num("BENCH_XFER_RUNS", 5) as usize;
    let vsock_mib = env_num("BENCH_VSOCK_MIB", 256);
    let blk_mib = env_num("BENCH_BLK_MIB", 64);
    let req_kib = env_num("BENCH_BLK_REQ_KIB", 1024);
    let want_qemu = std::env::var("BENCH_QEMU").as_deref() != Ok("0");

    let vmm = vmm_binary()?;
    let dir = tempfile::Builder::new()
        .prefix("rmvmm")
        .tempdir_in("/tmp")?;
    let guest = build_guest(&dir.path().join("guest.elf"), &[])?;
    let guest_pvh = build_guest(
        &dir.path().join("guest-pvh.elf"),
        &["pvh.S", "-Wl,--no-warn-rwx-segments"],
    )?;
    let s = Setup {
        vmm,
        guest,
        guest_pvh,
        dir,
    };
    let mut table = Table::default();
    let want_snapshot = std::env::var("BENCH_SNAPSHOT").as_deref() != Ok("0");
    if std::env::var("BENCH_SNAPSHOT_ONLY").as_deref() == Ok("1") {
        snapshot_section(&s, runs, &mut table)?;
        println!("# rmachine-vmm snapshots: test guest, 1 vCPU, {GUEST_MIB} MiB");
        table.print();
        return Ok(());
    }
    let firecracker = std::env::var_os("BENCH_FIRECRACKER").map(PathBuf::from);
    let alt = std::env::var_os("BENCH_VMM_ALT").map(PathBuf::from);
    let mut alt_starts: Vec<Start> = Vec::new();

    // 1. Start, interleaved: rmachine-vmm, QEMU, Firecracker if given, /bin/true.
    let boot_disk = s.disk("boot.img", 64)?;
    let mut fc: Vec<Start> = Vec::new();
    let mut fc_error: Option<String> = None;
    let mut qemu_error = if want_qemu {
        None
    } else {
        Some("BENCH_QEMU=0".to_string())
    };
    let (mut rm, mut qemu, mut spawn_true) = (Vec::new(), Vec::new(), Vec::new());
    let mut rm_no_seccomp = Vec::new();
    for i in 0..runs {
        // With the seccomp filters (the default) and without, alternating which goes first.
        let order: [&[&str]; 2] = if i % 2 == 0 {
            [&[], &["--no-seccomp"]]
        } else {
            [&["--no-seccomp"], &[]]
        };
        for args in order {
            let mut vm = s.rmachine_with_args(
                "boot",
                "rmtest.bench=boot",
                json!({"disks": [{"id": "data", "path": boot_disk}]}),
                args,
            )?;
            let sample = start_once(&mut vm)?;
            if args.is_empty() {
                rm.push(sample);
            } else {
                rm_no_seccomp.push(sample);
            }
            vm.wait_exit()?;
            drop(vm);
        }
        if qemu_error.is_none() {
            match s
                .qemu("rmtest.bench=boot", &boot_disk)
                .and_then(|mut vm| start_once(&mut vm))
            {
                Ok(sample) => qemu.push(sample),
                Err(e) => qemu_error = Some(format!("{e:#}")),
            }
        }
        if let Some(bin) = &alt {
            let mut vm = s.rmachine_bin(
                bin,
                "boot-alt",
                "rmtest.bench=boot",
                json!({"disks": [{"id": "data", "path": boot_disk}]}),
                &[],
            )?;
            alt_starts.push(start_once(&mut vm)?);
            vm.wait_exit()?;
        }
        if let (Some(bin), None) = (&firecracker, &fc_error) {
            match s
                .firecracker(bin, "rmtest.bench=boot", &boot_disk)
                .and_then(|mut vm| start_once(&mut vm))
            {
                Ok(sample) => fc.push(sample),
                Err(e) => fc_error = Some(format!("{e:#}")),
            }
        }
        let t = Instant::now();
        let status = Command::new("/bin/true")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status()?;
        spawn_true.push(t.elapsed());
        ensure!(status.success(), "/bin/true failed");
        eprintln!("start {i}: rmachine-vmm ready {}", ms(rm[i].ready));
    }
    let rm_first = median(rm.iter().map(|x| x.first).collect());
    let rm_ready = median(rm.iter().map(|x| x.ready).collect());
    let spawn_true = median(spawn_true);
    let running: Vec<Duration> = rm.iter().filter_map(|x| x.vcpu_running).collect();
    if running.len() == rm.len() {
        table.row(
            format!("rmachine-vmm: start → first guest instruction (vCPU thread's first KVM_RUN, median of {runs})"),
            ms(median(running)),
        );
    }
    table.row(
        format!("rmachine-vmm: start → first guest serial byte (median of {runs})"),
        ms(rm_first),
    );
    table.row("rmachine-vmm: start → `rmguest: ready`", ms(rm_ready));
    let off_first = median(rm_no_seccomp.iter().map(|x| x.first).collect());
    let off_ready = median(rm_no_seccomp.iter().map(|x| x.ready).collect());
    table.row(
        "rmachine-vmm --no-seccomp: start → first guest serial byte",
        ms(off_first),
    );
    table.row(
        "rmachine-vmm --no-seccomp: start → `rmguest: ready`",
        ms(off_ready),
    );
    table.row(
        "ready, seccomp filters on / off (target < 1.05×)",
        format!("{:.3}×", rm_ready.as_secs_f64() / off_ready.as_secs_f64()),
    );
    if let Some(e) = &qemu_error {
        eprintln!("QEMU peer not measured: {e}");
        table.row(
            "QEMU microvm (peer)",
            format!("not measured: {}", e.lines().next().unwrap_or("")),
        );
    } else {
        let q_first = median(qemu.iter().map(|x| x.first).collect());
        let q_ready = median(qemu.iter().map(|x| x.ready).collect());
        table.row(
            "QEMU microvm -accel kvm (peer): start → first guest serial byte",
            ms(q_first),
        );
        table.row("QEMU microvm (peer): start → `rmguest: ready`", ms(q_ready));
        table.row(
            "first byte, rmachine-vmm / QEMU",
            format!("{:.2}×", rm_first.as_secs_f64() / q_first.as_secs_f64()),
        );
        table.row(
            "ready, rmachine-vmm / QEMU",
            format!("{:.2}×", rm_ready.as_secs_f64() / q_ready.as_secs_f64()),
        );
    }
    if let Some(bin) = &alt {
        let a_first = median(alt_starts.iter().map(|x| x.first).collect());
        let a_ready = median(alt_starts.iter().map(|x| x.ready).collect());
        let running: Vec<Duration> = alt_starts.iter().filter_map(|x| x.vcpu_running).collect();
        if running.len() == alt_starts.len() {
            table.row(
                format!(
                    "rmachine-vmm ({}): start → first guest instruction",
                    bin.display()
                ),
                ms(median(running)),
            );
        }
        table.row(
            format!(
                "rmachine-vmm ({}): start → first guest serial byte",
                bin.display()
            ),
            ms(a_first),
        );
        table.row(
            format!("rmachine-vmm ({}): start → `rmguest: ready`", bin.display()),
            ms(a_ready),
        );
        table.row(
            "first byte, the other build / the first",
            format!("{:.2}×", a_first.as_secs_f64() / rm_first.as_secs_f64()),
        );
        table.row(
            "ready, the other build / the first",
            format!("{:.2}×", a_ready.as_secs_f64() / rm_ready.as_secs_f64()),
        );
    }
    if firecracker.is_some() {
        match &fc_error {
            Some(e) => table.row(
                "Firecracker (peer)",
                format!("not measured: {}", e.lines().next().unwrap_or("")),
            ),
            None => {
                let f_first = median(fc.iter().map(|x| x.first).collect());
                let f_ready = median(fc.iter().map(|x| x.ready).collect());
                table.row(
                    "Firecracker (peer): start → first guest serial byte",
                    ms(f_first),
                );
                table.row("Firecracker (peer): start → `rmguest: ready`", ms(f_ready));
                table.row(
                    "first byte, rmachine-vmm / Firecracker",
                    format!("{:.2}×", rm_first.as_secs_f64() / f_first.as_secs_f64()),
                );
            }
        }
    }
    table.row("spawn and reap `/bin/true` (peer)", ms(spawn_true));
    table.row(
        "first byte, rmachine-vmm / `/bin/true`",
        format!("{:.1}×", rm_first.as_secs_f64() / spawn_true.as_secs_f64()),
    );
    if std::env::var("BENCH_START_ONLY").as_deref() == Ok("1") {
        idle_overhead(
            &s,
            &boot_disk,
            firecracker.as_deref(),
            alt.as_deref(),
            &mut table,
        )?;
        println!("# rmachine-vmm: test guest, 1 vCPU, {GUEST_MIB} MiB (start only)");
        table.print();
        return Ok(());
    }

    // 2. Memory at the ready line, held there.
    let held = "rmtest.bench=boot rmtest.sync=1";
    let mut vm = s.rmachine(
        "idle",
        held,
        json!({"disks": [{"id": "data", "path": boot_disk}]}),
    )?;
    vm.wait_line("rmguest: bench waiting ready")?;
    let (rm_over, rm_guest) = overhead(&vm)?;
    vm.poke()?;
    vm.wait_exit()?;
    drop(vm);
    table.row(
        "rmachine-vmm: RSS − touched guest memory, idle at ready",
        format!(
            "{} (guest touched {}; target ≤ 10 MiB)",
            mib(rm_over),
            mib(rm_guest)
        ),
    );
    if qemu_error.is_none() {
        let mut vm = s.qemu(held, &boot_disk)?;
        vm.wait_line("rmguest: bench waiting ready")?;
        let (q_over, q_guest) = overhead(&vm)?;
        drop(vm);
        table.row(
            "QEMU microvm (peer): RSS − touched guest memory, idle at ready",
            format!("{} (guest touched {})", mib(q_over), mib(q_guest)),
        );
        table.row(
            "memory overhead, rmachine-vmm / QEMU",
            format!("{:.2}×", rm_over as f64 / q_over as f64),
        );
    }

    if firecracker.is_some() || alt.is_some() {
        idle_overhead(
            &s,
            &boot_disk,
            firecracker.as_deref(),
            alt.as_deref(),
            &mut table,
        )?;
    }

    // 3. The guest's own speed: the same loop under both VMMs and natively.
    let spin = format!("rmtest.bench=spin rmtest.spin_k={}", SPIN_ITERATIONS / 1000);
    let (mut rm_spin, mut q_spin, mut native_spin) = (vec![], vec![], vec![]);
    for _ in 0..3 {
        let disk = json!({"disks": [{"id": "data", "path": boot_disk}]});
        let mut vm = s.rmachine("spin", &spin, disk)?;
        rm_spin.push(spin_once(&mut vm)?);
        vm.wait_exit()?;
        drop(vm);
        if qemu_error.is_none() {
            let mut vm = s.qemu(&spin, &boot_disk)?;
            q_spin.push(spin_once(&mut vm)?);
        }
        native_spin.push(spin_native());
    }
    let mut spin_figure = format!("rmachine-vmm {:.0} ns", fmedian(rm_spin));
    if qemu_error.is_none() {
        spin_figure.push_str(&format!("; QEMU {:.0} ns", fmedian(q_spin)));
    }
    spin_figure.push_str(&format!("; host {:.2} ns", fmedian(native_spin)));
    table.row(
        "guest loop iteration (add, cmp, jne; median of 3)",
        spin_figure,
    );

    // 4. Transfers, interleaved with their peers.
    let (mut vsock, mut pair) = (vec![], vec![]);
    let (mut vm_blk, mut host_blk, mut blk_over) = (vec![], vec![], vec![]);
    for i in 0..xfer_runs {
        let v = vsock_once(&s, vsock_mib)?;
        let (a, b) = (v.g2h, v.h2g);
        vsock.push(v);
        pair.push(socketpair_once(vsock_mib)?);
        let (guest, host, over) = blk_once(&s, blk_mib, req_kib, i % 2 == 0)?;
        vm_blk.push(guest);
        host_blk.push(host);
        blk_over.push(over);
        eprintln!(
            "transfers {i}: vsock g2h {a:.0} h2g {b:.0} pair {:.0} MiB/s; blk w {:.0} r {:.0}/{:.0}, host w {:.0} r {:.0}/{:.0} MiB/s",
            pair[i], vm_blk[i].write, vm_blk[i].cold, vm_blk[i].warm, host_blk[i].write, host_blk[i].cold, host_blk[i].warm
        );
    }
    // Ratios: the median of each run's ratio (a run and its peer ran back to back).
    let ratio = |v: Vec<(f64, f64)>| {
        let r = fmedian(v.iter().map(|(a, b)| a / b).collect());
        format!("{:.0} %", 100.0 * r)
    };
    let g2h_ratio = ratio(vsock.iter().zip(&pair).map(|(v, p)| (v.g2h, *p)).collect());
    let h2g_ratio = ratio(vsock.iter().zip(&pair).map(|(v, p)| (v.h2g, *p)).collect());
    let g2h = fmedian(vsock.iter().map(|v| v.g2h).collect());
    let h2g = fmedian(vsock.iter().map(|v| v.h2g).collect());
    let pair = fmedian(pair);
    let busy = |f: fn(&Vsock) -> Busy| {
        let b: Vec<Busy> = vsock.iter().map(f).collect();
        let (vcpu, devices) = (
            fmedian(b.iter().map(|b| b.vcpu).collect()),
            fmedian(b.iter().map(|b| b.devices).collect()),
        );
        format!(
            "vCPU thread {:.0} %, device thread {:.0} % of a core",
            100.0 * vcpu,
            100.0 * devices
        )
    };
    table.row(
        format!("vsock guest → host ({vsock_mib} MiB, median of {xfer_runs})"),
        format!("{g2h:.0} MiB/s"),
    );
    table.row("vsock host → guest", format!("{h2g:.0} MiB/s"));
    table.row(
        "unix socketpair on the host (peer)",
        format!("{pair:.0} MiB/s"),
    );
    table.row("vsock guest → host / socketpair", g2h_ratio);
    table.row("vsock host → guest / socketpair", h2g_ratio);
    table.row("vsock guest → host: VMM threads busy", busy(|v| v.g2h_busy));
    table.row("vsock host → guest: VMM threads busy", busy(|v| v.h2g_busy));
    let medians = |f: fn(&Blk) -> f64| {
        let guest = fmedian(vm_blk.iter().map(f).collect());
        let host = fmedian(host_blk.iter().map(f).collect());
        (
            guest,
            host,
            ratio(
                vm_blk
                    .iter()
                    .zip(&host_blk)
                    .map(|(g, h)| (f(g), f(h)))
                    .collect(),
            ),
        )
    };
    let rows = [
        ("write + flush", medians(|b| b.write)),
        ("read, cold", medians(|b| b.cold)),
        ("read, page cache", medians(|b| b.warm)),
    ];
    for (what, (guest, host, ratio)) in rows {
        table.row(
            format!("virtio-blk {what} ({blk_mib} MiB, {req_kib} KiB requests)"),
            format!("{guest:.0} MiB/s; host file (peer) {host:.0} MiB/s; ratio {ratio}"),
        );
    }
    let worst = vsock
        .iter()
        .map(|v| v.overhead_kib)
        .chain(blk_over)
        .max()
        .unwrap_or(0);
    table.row(
        "rmachine-vmm: RSS − touched guest memory, after the transfers (worst)",
        mib(worst),
    );

    if want_snapshot {
        snapshot_section(&s, runs, &mut table)?;
    }
    println!("# rmachine-vmm: test guest, 1 vCPU, {GUEST_MIB} MiB");
    table.print();
    Ok(())
}
