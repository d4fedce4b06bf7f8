//! Helpers of the KVM integration tests: the `require_kvm()` gate, the test guest (built from
//! `tests/guest` with gcc at test time), and running `rmachine-vmm` with generous timeouts.

#![allow(dead_code)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Generous bound for anything the guest does (it runs at full speed; this only catches hangs).
pub const TIMEOUT: Duration = Duration::from_secs(60);

/// Whether KVM tests can run. Prints why they skip; panics instead when `REQUIRE_KVM=1`.
pub fn require_kvm() -> bool {
    match hypervisor::new() {
        Ok(_) => true,
        Err(e) => {
            if std::env::var("REQUIRE_KVM").as_deref() == Ok("1") {
                panic!("REQUIRE_KVM=1 but /dev/kvm is unusable: {e}");
            }
            eprintln!("skipped: /dev/kvm is unusable: {e}");
            false
        }
    }
}

/// Builds the test guest ELF into `dir` and returns its path.
pub fn build_guest(dir: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/guest");
    let out = dir.join("guest.elf");
    // One gcc command for the tests and the VMM benchmark (benches/src/bin/vmm.rs).
    let status = Command::new("sh")
        .arg(src.join("build.sh"))
        .arg(&out)
        .status()
        .expect("gcc runs (the test guest needs gcc and binutils)");
    assert!(status.success(), "building the test guest failed");
    out
}

/// A command running `rmachine-vmm`. With `RMTEST_VMM_STRACE=DIR` it runs under
/// `strace -f -ff` with `--seccomp-log`, writing one file per thread under
/// `DIR/<test pid>-<n>/` (how the filters' allow-lists are measured: see `vmm::seccomp`).
///
/// The VMM (or strace and the VMM) runs in a process group of its own, which
/// [`VmmProcess`]'s drop kills as a whole: killing strace alone would leave its tracee running.
pub fn vmm_command() -> Command {
    let mut cmd = vmm_command_inner();
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    cmd
}

fn vmm_command_inner() -> Command {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static RUNS: AtomicUsize = AtomicUsize::new(0);
    // RMTEST_VMM_BIN runs the tests against another build (a static musl one).
    let built = env!("CARGO_BIN_EXE_rmachine-vmm");
    let bin = std::env::var("RMTEST_VMM_BIN").unwrap_or_else(|_| built.to_string());
    match std::env::var_os("RMTEST_VMM_STRACE") {
        Some(dir) => {
            let n = RUNS.fetch_add(1, Ordering::SeqCst);
            let out = Path::new(&dir).join(format!("{}-{n}", std::process::id()));
            std::fs::create_dir_all(&out).unwrap();
            let mut cmd = Command::new("strace");
            cmd.args(["-f", "-ff", "-qq", "-o"])
                .arg(out.join("t"))
                .arg(&bin)
                .arg("--seccomp-log");
            cmd
        }
        None => Command::new(bin),
    }
}

/// A running `rmachine-vmm`.
pub struct VmmProcess {
    pub child: Child,
    pub console: PathBuf,
    pub stderr_path: PathBuf,
}

impl VmmProcess {
    /// Starts `rmachine-vmm --config <dir>/vm.json` with `config` written there.
    pub fn start(dir: &Path, config: &serde_json::Value) -> Self {
        Self::start_with_args(dir, config, &[])
    }

    /// [`VmmProcess::start`] with more command-line arguments.
    pub fn start_with_args(dir: &Path, config: &serde_json::Value, args: &[&str]) -> Self {
        let config_path = dir.join("vm.json");
        std::fs::write(&config_path, serde_json::to_vec_pretty(config).unwrap()).unwrap();
        let stderr_path = dir.join("vmm.log");
        let child = vmm_command()
            .args(args)
            .arg("--config")
            .arg(&config_path)
            .env(
                "RUST_LOG",
                std::env::var("RMTEST_LOG").unwrap_or_else(|_| "info".to_string()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr_path).unwrap())
            .spawn()
            .expect("start rmachine-vmm");
        VmmProcess {
            child,
            console: dir.join("console.log"),
            stderr_path,
        }
    }

    /// The console output so far.
    pub fn console(&self) -> String {
        std::fs::read_to_string(&self.console).unwrap_or_default()
    }

    /// The VMM's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Waits until the console contains `needle`.
    pub fn wait_for_console(&mut self, needle: &str) {
        let start = Instant::now();
        while start.elapsed() < TIMEOUT {
            if self.console().contains(needle) {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "vmm exited ({status}) before {needle:?}\nconsole:\n{}\nlog:\n{}",
                    self.console(),
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!(
            "timed out waiting for {needle:?}\nconsole:\n{}\nlog:\n{}",
            self.console(),
            self.log()
        );
    }

    /// Waits until the VMM's log contains `needle`.
    pub fn wait_for_log(&mut self, needle: &str) {
        let start = Instant::now();
        while start.elapsed() < TIMEOUT {
            if self.log().contains(needle) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!(
            "timed out waiting for {needle:?} in the log:\n{}\nconsole:\n{}",
            self.log(),
            self.console()
        );
    }

    /// Waits for the VMM to exit.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let start = Instant::now();
        while start.elapsed() < TIMEOUT {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        panic!(
            "vmm did not exit\nconsole:\n{}\nlog:\n{}",
            self.console(),
            self.log()
        );
    }
}

impl Drop for VmmProcess {
    fn drop(&mut self) {
        // The whole process group (see `vmm_command`), then the child itself.
        if let Ok(pgid) = i32::try_from(self.child.id()) {
            // SAFETY: kill takes integers; the group is the child's own, made at its start.
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends one HTTP/1.1 request over a unix socket; returns (status, body).
pub fn http(socket: &Path, method: &str, path: &str) -> (u16, String) {
    http_with_body(socket, method, path, "")
}

/// [`http`] with a request body.
pub fn http_with_body(socket: &Path, method: &str, path: &str, body: &str) -> (u16, String) {
    use std::io::Write;
    let mut s = std::os::unix::net::UnixStream::connect(socket).expect("connect to the api");
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    write!(s, "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).unwrap();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}

/// Waits for a path to appear.
pub fn wait_for_path(path: &Path) {
    let start = Instant::now();
    while !path.exists() {
        assert!(
            start.elapsed() < TIMEOUT,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A host tool (virtiofsd, passt) and how to run it.
#[derive(Debug, Clone)]
pub struct HostTool {
    /// The dynamic loader and library folder of a bundle (trixie's glibc is newer than the
    /// host's), or `None` for a binary that runs as it is.
    pub bundle: Option<(PathBuf, PathBuf)>,
    pub binary: PathBuf,
}

/// Where a host tool may be: the variable naming a binary, the bundle's folder under
/// `host-tools`, the binary inside the bundle, the host's own binary.
pub struct ToolPlaces {
    pub env_var: &'static str,
    pub bundle: &'static str,
    pub bundle_binary: &'static str,
    pub host_binary: &'static str,
}

/// virtiofsd's places (as in guest/image/src/host_tools.rs).
pub const VIRTIOFSD: ToolPlaces = ToolPlaces {
    env_var: "RMACHINE_VIRTIOFSD",
    bundle: "virtiofsd",
    bundle_binary: "usr/libexec/virtiofsd",
    host_binary: "/usr/libexec/virtiofsd",
};

/// passt's places.
pub const PASST: ToolPlaces = ToolPlaces {
    env_var: "RMACHINE_PASST",
    bundle: "passt",
    bundle_binary: "usr/bin/passt",
    host_binary: "/usr/bin/passt",
};

impl HostTool {
    /// The variable's binary, the bundle `rmachine setup` installs under the cache
    /// (`RMACHINE_CACHE`, else `$XDG_CACHE_HOME/rmachine`, else `~/.cache/rmachine`; run
    /// through its own loader), or the host's binary. `None` when there is none; the caller
    /// decides whether that skips or fails.
    pub fn find(places: &ToolPlaces) -> Option<Self> {
        let var = |name: &str| {
            std::env::var_os(name)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        if let Some(binary) = var(places.env_var) {
            return binary.is_file().then_some(HostTool {
                bundle: None,
                binary,
            });
        }
        let cache = var("RMACHINE_CACHE")
            .or_else(|| var("XDG_CACHE_HOME").map(|d| d.join("rmachine")))
            .or_else(|| var("HOME").map(|h| h.join(".cache/rmachine")));
        if let Some(dir) = cache.map(|c| c.join("host-tools").join(places.bundle)) {
            if dir.join(".complete").exists() {
                return Some(HostTool {
                    bundle: Some((
                        dir.join("usr/lib64/ld-linux-x86-64.so.2"),
                        dir.join("usr/lib/x86_64-linux-gnu"),
                    )),
                    binary: dir.join(places.bundle_binary),
                });
            }
        }
        let binary = PathBuf::from(places.host_binary);
        binary.is_file().then_some(HostTool {
            bundle: None,
            binary,
        })
    }

    /// A copy of a bundle in `dir` (world-readable), for a user who cannot read the cache.
    pub fn copied_to(&self, dir: &Path) -> Self {
        use std::os::unix::fs::PermissionsExt;
        let Some((loader, libs)) = &self.bundle else {
            return self.clone();
        };
        let lib_dir = dir.join("lib");
        std::fs::create_dir_all(&lib_dir).unwrap();
        for entry in std::fs::read_dir(libs).unwrap().flatten() {
            if entry.path().is_file() {
                std::fs::copy(entry.path(), lib_dir.join(entry.file_name())).unwrap();
            }
        }
        std::fs::copy(loader, dir.join("ld.so")).unwrap();
        let binary = dir.join(self.binary.file_name().expect("a tool binary has a name"));
        std::fs::copy(&self.binary, &binary).unwrap();
        for path in [dir.to_path_buf(), lib_dir.clone()] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        HostTool {
            bundle: Some((dir.join("ld.so"), lib_dir)),
            binary,
        }
    }

    /// A command running virtiofsd, as user and group `run_as` when given (through setpriv).
    pub fn command(&self, run_as: Option<u32>) -> Command {
        let mut argv: Vec<std::ffi::OsString> = Vec::new();
        if let Some((loader, libs)) = &self.bundle {
            argv.extend([
                loader.clone().into(),
                "--library-path".into(),
                libs.clone().into(),
            ]);
        }
        argv.push(self.binary.clone().into());
        let mut cmd = match run_as {
            Some(id) => {
                let mut cmd = Command::new("setpriv");
                cmd.arg(format!("--reuid={id}"))
                    .arg(format!("--regid={id}"))
                    .args(["--clear-groups", "--"]);
                cmd
            }
            None => Command::new(&argv[0]),
        };
        cmd.args(if run_as.is_some() {
            &argv[..]
        } else {
            &argv[1..]
        });
        cmd
    }
}

/// The tool at `places`, or `None` after printing why the test skips; panics instead when
/// `REQUIRE_KVM=1` (CI installs the tools with `rmachine setup`).
pub fn require_tool(places: &ToolPlaces) -> Option<HostTool> {
    let tool = HostTool::find(places);
    if tool.is_none() {
        let why = format!(
            "no {}: run `rmachine setup` or set {}",
            places.bundle, places.env_var
        );
        if std::env::var("REQUIRE_KVM").as_deref() == Ok("1") {
            panic!("REQUIRE_KVM=1 but {why}");
        }
        eprintln!("skipped: {why}");
    }
    tool
}

/// A virtiofsd serving `shared` on `socket`, killed on drop.
pub struct Virtiofsd {
    pub child: Child,
    pub log: PathBuf,
}

impl Virtiofsd {
    /// Starts `tool` (as user and group `run_as`, if given) serving `shared` with the
    /// namespace sandbox, and waits for its socket.
    pub fn start(
        tool: &HostTool,
        run_as: Option<u32>,
        socket: &Path,
        shared: &Path,
        log: &Path,
    ) -> Self {
        let child = tool
            .command(run_as)
            .arg("--socket-path")
            .arg(socket)
            .arg("--shared-dir")
            .arg(shared)
            .args([
                "--cache",
                "never",
                "--sandbox",
                "namespace",
                "--log-level",
                "info",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .expect("start virtiofsd");
        let mut daemon = Virtiofsd {
            child,
            log: log.to_path_buf(),
        };
        let start = Instant::now();
        while !socket.exists() {
            if let Ok(Some(status)) = daemon.child.try_wait() {
                panic!(
                    "virtiofsd exited ({status}):\n{}",
                    std::fs::read_to_string(log).unwrap_or_default()
                );
            }
            assert!(
                start.elapsed() < TIMEOUT,
                "virtiofsd never created its socket"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        daemon
    }

    /// virtiofsd's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Virtiofsd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
