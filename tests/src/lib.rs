//! Harness for the end-to-end tests: boots the installed guest image under QEMU with a
//! data disk and a config disk, reaches the agent over QEMU's TCP forwarding with the
//! token, forwards the engine to a unix socket and runs the host's real `docker` CLI.
//!
//! The tests need the guest image (`rmachine image build`, which the README's setup and
//! `.ci/run` do) and fail with that instruction when it is missing; the arm64 tests need
//! the arm64 image (`rmachine image build --arch arm64`, a part of `.ci/run`).
//!
//! [`nested`] is the nested-KVM harness (rmachine-vmm inside an L1 VM under TCG), shared by
//! the `nested_vmm` test and the nested benchmark.
#![forbid(unsafe_code)]

pub mod nested;
pub mod remote;

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rmachine_machine::accel::{self, Accel, AccelChoice};
use rmachine_machine::guest_link::{Carrier, ControlClient};
use rmachine_machine::paths::Paths;
pub use rmachine_machine::platform::Arch;
use rmachine_machine::platform::Platform;
use rmachine_machine::qemu::{self, QemuVm};
use rmachine_protocol::config_disk::GuestConfig;
use rmachine_protocol::control::{GuestInfo, Reply, Request, ServiceState};
use rmachine_protocol::Service;

/// The installed guest image of the host's architecture (newest), verified; panics with
/// the fix when missing.
pub fn image() -> (rmachine_machine::image_store::Manifest, PathBuf) {
    image_of(Arch::host())
}

/// The installed guest image of `arch` (newest), verified; panics with the fix when
/// missing.
pub fn image_of(arch: Arch) -> (rmachine_machine::image_store::Manifest, PathBuf) {
    let paths = Paths::from_env().expect("HOME or RMACHINE_HOME is set");
    match rmachine_machine::image_store::resolve(&paths, None, arch) {
        Ok(found) => found,
        Err(e) => panic!(
            "no usable {arch} guest image ({e}). Build it first: `rmachine image build --arch {arch}` \
             (the README's setup command and .ci/run do this)"
        ),
    }
}

/// A sparse raw disk of `size_gib`.
pub fn sparse_disk(path: &Path, size_gib: u64) {
    let f = std::fs::File::create(path).expect("create data disk");
    f.set_len(size_gib << 30).expect("size data disk");
}

/// A random token (hex).
pub fn new_token() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

fn free_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local addr")
}

/// One booted guest.
pub struct Guest {
    pub dir: PathBuf,
    pub carrier: Arc<Carrier>,
    pub console_log: PathBuf,
    child: Option<Child>,
    pub started: Instant,
}

impl Guest {
    /// Boots the image with `data_disk` under QEMU (accelerator chosen as the `qemu`
    /// driver does).
    pub fn boot(dir: &Path, data_disk: &Path) -> Guest {
        Guest::boot_arch(dir, data_disk, Arch::host(), None)
    }

    /// Boots the image of `arch` with `data_disk` under QEMU, with `accel` or the one the
    /// `qemu` driver would choose for that architecture.
    pub fn boot_arch(dir: &Path, data_disk: &Path, arch: Arch, accel: Option<Accel>) -> Guest {
        let (manifest, _) = image_of(arch);
        let token = new_token();
        let config = GuestConfig {
            version: rmachine_protocol::PROTOCOL_VERSION,
            token: token.clone(),
            hostname: "e2e".into(),
            data_disk: "/dev/vdb".into(),
            host_time_unix_ns: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_nanos() as i64,
            host_addr: Some("10.0.2.2".into()),
            mounts: vec![],
            ..Default::default()
        };
        let config_disk = dir.join("config.img");
        std::fs::write(&config_disk, config.encode()).expect("write config disk");
        Guest::boot_custom_arch(
            dir,
            data_disk,
            &manifest.kernel_cmdline,
            &config_disk,
            token,
            arch,
            accel,
        )
    }

    /// Boots the image with a given kernel command line and third disk (the config disk
    /// normally); `token` is what the carrier presents.
    pub fn boot_custom(
        dir: &Path,
        data_disk: &Path,
        cmdline: &str,
        third_disk: &Path,
        token: String,
    ) -> Guest {
        Guest::boot_custom_arch(
            dir,
            data_disk,
            cmdline,
            third_disk,
            token,
            Arch::host(),
            None,
        )
    }

    fn boot_custom_arch(
        dir: &Path,
        data_disk: &Path,
        cmdline: &str,
        third_disk: &Path,
        token: String,
        arch: Arch,
        accel: Option<Accel>,
    ) -> Guest {
        let (manifest, image_dir) = image_of(arch);
        let mut ports = BTreeMap::new();
        let mut forwards = Vec::new();
        for service in Service::ALL {
            let host = free_port();
            ports.insert(service.port(), host);
            forwards.push((host, service.port()));
        }
        let console_log = dir.join("console.log");
        let choice = match accel {
            Some(accel) => AccelChoice {
                accel,
                reason: "chosen by the test".into(),
            },
            None => accel::choose_for(arch),
        };
        eprintln!(
            "booting {} ({arch}) under QEMU ({}: {})",
            manifest.version,
            choice.accel.as_str(),
            choice.reason
        );
        let vm = QemuVm {
            arch,
            host: Platform::current(),
            kernel: image_dir.join(&manifest.kernel.file),
            cmdline: cmdline.to_string(),
            rootfs: image_dir.join(&manifest.rootfs.file),
            data_disk: data_disk.to_path_buf(),
            config_disk: third_disk.to_path_buf(),
            cpus: 2,
            memory_mib: 2048,
            accel: choice.accel,
            console_log: console_log.clone(),
            forwards,
            vsock_cid: None,
            qmp_socket: None,
            qmp_events_socket: None,
            pid_file: None,
            shares: vec![],
            primary_mac: None,
            nics: vec![],
            incoming: false,
        };
        let mut command = vm.command().expect("a QEMU command for this host");
        if std::env::var_os("RMACHINE_E2E_VERBOSE").is_some() {
            eprintln!("qemu command: {command:?}");
        }
        let child = command
            .stdin(std::process::Stdio::null())
            .stdout(std::fs::File::create(dir.join("qemu.out")).unwrap())
            .stderr(std::fs::File::create(dir.join("qemu.err")).unwrap())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "start {} (Debian package {}): {e}",
                    qemu::binary(arch),
                    qemu::debian_package(arch)
                )
            });
        Guest {
            dir: dir.to_path_buf(),
            carrier: Arc::new(Carrier::Tcp { ports, token }),
            console_log,
            child: Some(child),
            started: Instant::now(),
        }
    }

    /// Waits until the console shows `marker`; returns the time since QEMU started.
    pub fn wait_console(&mut self, marker: &str, timeout: Duration) -> Duration {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            self.assert_running();
            if self.console().contains(marker) {
                return self.started.elapsed();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "console never showed {marker:?} within {timeout:?}\n{}",
            self.console_tail()
        );
    }

    /// The QEMU process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// The console so far; it is bytes, not always UTF-8 (a serial line may start with
    /// 0xff), so it is read lossily.
    pub fn console(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.console_log).unwrap_or_default()).into_owned()
    }

    /// The last lines of the console, for failure messages.
    pub fn console_tail(&self) -> String {
        let text = self.console();
        let lines: Vec<&str> = text.lines().collect();
        let err = std::fs::read_to_string(self.dir.join("qemu.err")).unwrap_or_default();
        format!(
            "--- console (last 60 lines) ---\n{}\n--- qemu stderr ---\n{err}",
            lines[lines.len().saturating_sub(60)..].join("\n")
        )
    }

    /// Sends one control request on a fresh connection.
    pub fn control(&self, rt: &tokio::runtime::Runtime, request: Request) -> Result<Reply, String> {
        rt.block_on(async {
            let mut c = ControlClient::connect(&self.carrier)
                .await
                .map_err(|e| error_chain(&e))?;
            c.call(request).await.map_err(|e| error_chain(&e))
        })
    }

    /// Waits until the agent answers `ping`; returns the time since QEMU started.
    pub fn wait_ping(&mut self, rt: &tokio::runtime::Runtime, timeout: Duration) -> Duration {
        let deadline = Instant::now() + timeout;
        let mut last = String::new();
        while Instant::now() < deadline {
            self.assert_running();
            match self.control(rt, Request::Ping {}) {
                Ok(Reply::Pong) => return self.started.elapsed(),
                Ok(other) => panic!("ping answered {other:?}"),
                Err(e) => last = e,
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "agent did not answer ping within {timeout:?} (last error: {last})\n{}",
            self.console_tail()
        );
    }

    /// Waits until the agent reports dockerd running; returns the time since QEMU started.
    pub fn wait_engine(
        &mut self,
        rt: &tokio::runtime::Runtime,
        timeout: Duration,
    ) -> (Duration, GuestInfo) {
        let deadline = Instant::now() + timeout;
        let mut last = None;
        while Instant::now() < deadline {
            self.assert_running();
            if let Ok(Reply::Info(info)) = self.control(rt, Request::Info {}) {
                if info.dockerd.state == ServiceState::Running {
                    return (self.started.elapsed(), *info);
                }
                last = Some(info);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "engine not running within {timeout:?}; last info: {last:?}\n{}",
            self.console_tail()
        );
    }

    fn assert_running(&mut self) {
        if let Some(child) = self.child.as_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("QEMU exited early ({status})\n{}", self.console_tail());
            }
        }
    }

    /// Waits for QEMU to exit; returns its status.
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut().expect("guest is running");
        loop {
            if let Some(status) = child.try_wait().expect("wait for qemu") {
                self.child = None;
                return status;
            }
            if Instant::now() > deadline {
                panic!(
                    "QEMU still running {timeout:?} after shutdown\n{}",
                    self.console_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Serves the guest's engine on a unix socket in the guest's folder; returns its path.
    pub fn engine_socket(&self, rt: &tokio::runtime::Runtime) -> PathBuf {
        let path = self.dir.join("docker.sock");
        let endpoint = rmachine_machine::sys::local_socket::Endpoint::Unix(path.clone());
        let listener = rt
            .block_on(async { rmachine_machine::sys::local_socket::LocalListener::bind(&endpoint) })
            .expect("bind docker.sock");
        rt.spawn(rmachine_machine::forward::serve(
            listener,
            self.carrier.clone(),
            Service::Engine,
        ));
        path
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// An error and its sources on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}

/// A multi-threaded runtime for the forwarders.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Runs the host's `docker` CLI against `socket`.
pub fn docker(socket: &Path, args: &[&str]) -> Output {
    docker_with_stdin(socket, args, None)
}

/// Runs `docker` with bytes on stdin.
pub fn docker_with_stdin(socket: &Path, args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut cmd = Command::new("docker");
    cmd.env("DOCKER_HOST", format!("unix://{}", socket.display()))
        .env_remove("DOCKER_CONTEXT")
        .args(args);
    output_with_stdin(cmd, stdin)
}

/// Runs `docker` and asserts success; returns stdout.
pub fn docker_ok(socket: &Path, args: &[&str]) -> String {
    expect_success("docker", args, docker(socket, args))
}

/// Asserts that `program args` succeeded; returns its stdout.
fn expect_success(program: &str, args: &[&str], out: Output) -> String {
    assert!(
        out.status.success(),
        "{program} {} failed ({}):\nstdout: {}\nstderr: {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `cmd` with `stdin` bytes (or none) and collects its output.
fn output_with_stdin(mut cmd: Command, stdin: Option<&[u8]>) -> Output {
    use std::io::Write;
    cmd.stdin(if stdin.is_some() {
        std::process::Stdio::piped()
    } else {
        std::process::Stdio::null()
    })
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    if let Some(bytes) = stdin {
        child
            .stdin
            .take()
            .expect("stdin piped")
            .write_all(bytes)
            .expect("write stdin");
    }
    child.wait_with_output().expect("wait for the command")
}

/// A root filesystem tarball of the host's busybox-static with its applets linked, for
/// `docker import` (no registry is reachable).
pub fn busybox_tarball(dir: &Path) -> PathBuf {
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("busybox not found: install the Debian package busybox-static");
    busybox_tarball_from(dir, &busybox)
}

/// The same for a guest of `arch`: the host's busybox for the host's architecture, else
/// [`busybox_of`].
pub fn busybox_tarball_of(dir: &Path, arch: Arch) -> PathBuf {
    if arch == Arch::host() {
        return busybox_tarball(dir);
    }
    busybox_tarball_from(dir, &busybox_of(arch))
}

/// ELF `e_machine` of a file, if it is an ELF file.
pub fn elf_machine(path: &Path) -> Option<u16> {
    let bytes = std::fs::read(path).ok()?;
    (bytes.get(..4) == Some(b"\x7fELF")).then_some(())?;
    bytes.get(18..20).map(|b| u16::from_le_bytes([b[0], b[1]]))
}

/// Debian trixie's busybox-static for `arch`, downloaded through the image builder's own
/// apt configuration (the host's dpkg architectures are not changed) and kept under the
/// cache root (`e2e/busybox-static-<arch>/busybox`) for the next runs.
pub fn busybox_of(arch: Arch) -> PathBuf {
    struct Quiet;
    impl rmachine_image::Progress for Quiet {
        fn step(&self, _: usize, _: usize, _: &str) {}
        fn detail(&self, what: &str) {
            eprintln!("  {what}");
        }
        fn finish(&self, _: &str) {}
    }
    let paths = Paths::from_env().expect("HOME or RMACHINE_HOME is set");
    let cached = paths
        .cache()
        .join(format!("e2e/busybox-static-{arch}/busybox"));
    if elf_machine(&cached) != Some(arch.elf_machine()) {
        let unpack = cached.with_file_name("unpack");
        let _ = std::fs::remove_dir_all(&unpack);
        std::fs::create_dir_all(&unpack).expect("create the busybox folder");
        let dirs = rmachine_image::BuildDirs::new(paths.cache(), paths.images_dir());
        let package = format!("busybox-static:{arch}");
        eprintln!("fetching {package} from Debian trixie");
        let got =
            rmachine_image::host_tools::unpack_packages(&dirs, None, &[&package], &unpack, &Quiet)
                .unwrap_or_else(|e| panic!("cannot fetch {package}: {}", error_chain(&e)));
        eprintln!("  {}", got.join(", "));
        let binary = ["usr/bin/busybox", "bin/busybox"]
            .into_iter()
            .map(|p| unpack.join(p))
            .find(|p| p.is_file())
            .unwrap_or_else(|| panic!("{package} has no busybox binary"));
        std::fs::rename(&binary, &cached).expect("keep busybox");
        let _ = std::fs::remove_dir_all(&unpack);
    }
    assert_eq!(
        elf_machine(&cached),
        Some(arch.elf_machine()),
        "{} is not an {arch} executable",
        cached.display()
    );
    cached
}

/// Debian trixie's packages for `arch`, unpacked (`dpkg-deb -x`, no maintainer scripts)
/// into one tree through the image builder's own apt configuration and kept under the
/// cache root (`e2e/<name>-<arch>/`) for the next runs.
pub fn trixie_tree(name: &str, arch: Arch, packages: &[&str]) -> PathBuf {
    struct Quiet;
    impl rmachine_image::Progress for Quiet {
        fn step(&self, _: usize, _: usize, _: &str) {}
        fn detail(&self, what: &str) {
            eprintln!("  {what}");
        }
        fn finish(&self, _: &str) {}
    }
    let paths = Paths::from_env().expect("HOME or RMACHINE_HOME is set");
    let tree = paths.cache().join(format!("e2e/{name}-{arch}"));
    let done = tree.join(".complete");
    if !done.is_file() {
        let _ = std::fs::remove_dir_all(&tree);
        std::fs::create_dir_all(&tree).expect("create the package tree");
        let dirs = rmachine_image::BuildDirs::new(paths.cache(), paths.images_dir());
        let packages: Vec<String> = packages.iter().map(|p| format!("{p}:{arch}")).collect();
        let packages: Vec<&str> = packages.iter().map(String::as_str).collect();
        eprintln!("fetching {} from Debian trixie", packages.join(", "));
        rmachine_image::host_tools::unpack_packages(&dirs, None, &packages, &tree, &Quiet)
            .unwrap_or_else(|e| panic!("cannot fetch {packages:?}: {}", error_chain(&e)));
        std::fs::write(&done, packages.join("\n")).expect("mark the tree complete");
    }
    tree
}

/// An image tarball (for `docker import`) of a container registry: Debian trixie's
/// `docker-registry` (Distribution 2.8) with the C library it links and busybox, serving
/// on port 5000 without authentication, its storage in `/var/lib/registry`. Run it as
/// `/usr/bin/docker-registry serve /etc/registry.yml`. (No image pulls here: Docker Hub's
/// `registry:2` is what a user would run.)
pub fn registry_tarball(dir: &Path) -> PathBuf {
    let arch = Arch::host();
    let tree = trixie_tree("registry", arch, &["docker-registry", "libc6"]);
    let root = dir.join("registry-root");
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    let status = Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", tree.display()))
        .arg(&root)
        .status()
        .expect("run cp");
    assert!(status.success(), "copying the registry tree failed");
    let _ = std::fs::remove_file(root.join(".complete"));
    for d in ["tmp", "var/lib/registry", "bin"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    // Debian's merged /usr: the packages ship /usr only, base-files adds these links.
    for (link, target) in [("lib", "usr/lib"), ("lib64", "usr/lib64")] {
        if root.join(target).is_dir() && !root.join(link).exists() {
            std::os::unix::fs::symlink(target, root.join(link)).unwrap();
        }
    }
    std::fs::copy(
        ["/bin/busybox", "/usr/bin/busybox"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("busybox not found: install the Debian package busybox-static"),
        root.join("bin/busybox"),
    )
    .unwrap();
    std::os::unix::fs::symlink("busybox", root.join("bin/sh")).unwrap();
    std::fs::write(
        root.join("etc/registry.yml"),
        "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: /var/lib/registry\n\
         http:\n  addr: :5000\n",
    )
    .unwrap();
    let tarball = dir.join("registry.tar");
    let status = Command::new("tar")
        .arg("-C")
        .arg(&root)
        .arg("-cf")
        .arg(&tarball)
        .arg(".")
        .status()
        .expect("run tar");
    assert!(status.success(), "tar failed");
    let _ = std::fs::remove_dir_all(&root);
    tarball
}

/// A container registry on the host's loopback: Debian trixie's `docker-registry`
/// (Distribution 2.8) run from its package tree with the tree's own C library (trixie's
/// is newer than the host's), storing under `storage`; killed on drop.
pub struct HostRegistry {
    pub port: u16,
    pub storage: PathBuf,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl HostRegistry {
    pub fn start() -> HostRegistry {
        let arch = Arch::host();
        let tree = trixie_tree("registry", arch, &["docker-registry", "libc6"]);
        let dir = tempfile::tempdir().expect("temp dir");
        let storage = dir.path().join("storage");
        std::fs::create_dir_all(&storage).unwrap();
        let port = free_local_port();
        let config = dir.path().join("registry.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
                storage.display()
            ),
        )
        .unwrap();
        let multiarch = match arch {
            Arch::Amd64 => "x86_64-linux-gnu",
            Arch::Arm64 => "aarch64-linux-gnu",
        };
        let libs = tree.join("usr/lib").join(multiarch);
        let loader = std::fs::read_dir(&libs)
            .expect("the tree's C library")
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("ld-linux"))
            })
            .expect("the tree's dynamic loader");
        let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
        let child = Command::new(loader)
            .arg("--library-path")
            .arg(&libs)
            .arg(tree.join("usr/bin/docker-registry"))
            .arg("serve")
            .arg(&config)
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start docker-registry");
        let registry = HostRegistry {
            port,
            storage,
            child,
            _dir: dir,
        };
        wait_until(
            "the registry answering /v2/",
            Duration::from_secs(30),
            || http_get(port, "/v2/").map(|_| ()),
        );
        registry
    }

    /// What the registry logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("registry.log")).unwrap_or_default()
    }

    /// The file holding blob `digest` (`sha256:HEX`) in the registry's storage.
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
        self.storage
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }
}

impl Drop for HostRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A root filesystem tarball of `busybox` with its applets linked.
fn busybox_tarball_from(dir: &Path, busybox: &Path) -> PathBuf {
    let root = dir.join("busybox-root");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    for d in ["etc", "tmp", "www", "proc", "sys", "dev"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy(busybox, root.join("bin/busybox")).unwrap();
    for applet in [
        "sh",
        "echo",
        "cat",
        "ls",
        "sleep",
        "httpd",
        "true",
        "wc",
        "sha256sum",
        "nc",
        "wget",
        "env",
        "date",
        "id",
        "mkdir",
        "rm",
        "find",
        "uname",
        "inotifyd",
        "mv",
        "touch",
        "yes",
        "head",
        "sync",
        "ping",
    ] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    let tarball = dir.join("busybox.tar");
    let status = Command::new("tar")
        .arg("-C")
        .arg(&root)
        .arg("-cf")
        .arg(&tarball)
        .arg(".")
        .status()
        .expect("run tar");
    assert!(status.success(), "tar failed");
    tarball
}

/// The `rmachine` binary of this build: `RMACHINE_BIN`, else beside the running binary
/// (`target/<profile>/` for a bench) or one folder up (`target/<profile>/deps/<test>`).
pub fn rmachine_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("RMACHINE_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("executable path");
    let dir = exe.parent().expect("executable folder");
    // A bench built with its own profile finds the CLI of a debug or release build.
    let target = dir.parent().unwrap_or(dir);
    let candidates = [
        dir.join("rmachine"),
        target.join("rmachine"),
        target.join("debug/rmachine"),
        target.join("release/rmachine"),
    ];
    candidates.iter().find(|p| p.is_file()).cloned().unwrap_or_else(|| {
        panic!("rmachine not built beside {}: run `cargo build -p rmachine` (cargo nextest run --workspace builds it)", exe.display())
    })
}

/// A private rmachine home (sharing the installed guest images) and docker config
/// (sharing the installed CLI plugins), so tests never touch the user's machines.
pub struct MachineEnv {
    pub dir: tempfile::TempDir,
    pub home: PathBuf,
    pub docker_config: PathBuf,
}

impl MachineEnv {
    /// An env whose images folder holds an image of the host's architecture.
    pub fn new() -> MachineEnv {
        MachineEnv::with_image_of(Arch::host())
    }

    /// An env whose images folder holds an image of `arch` (panics with the fix if none
    /// does).
    pub fn with_image_of(arch: Arch) -> MachineEnv {
        let (_, image_dir) = image_of(arch);
        let images = image_dir.parent().expect("images folder").to_path_buf();
        MachineEnv::with_images(Some(&images))
    }

    /// An env with no guest image at all (as on a host that cannot build one): its images
    /// folder is its own and empty.
    pub fn without_images() -> MachineEnv {
        MachineEnv::with_images(None)
    }

    fn with_images(images: Option<&Path>) -> MachineEnv {
        // Short paths: unix socket paths are limited to 108 bytes.
        let dir = tempfile::Builder::new()
            .prefix("rm")
            .tempdir_in("/tmp")
            .expect("temp dir");
        let home = dir.path().join("h");
        std::fs::create_dir_all(&home).unwrap();
        match images {
            Some(images) => std::os::unix::fs::symlink(images, home.join("images")).unwrap(),
            None => std::fs::create_dir_all(home.join("images")).unwrap(),
        }
        let docker_config = dir.path().join("d");
        std::fs::create_dir_all(&docker_config).unwrap();
        let user_config = std::env::var_os("DOCKER_CONFIG")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker")));
        if let Some(plugins) = user_config
            .map(|c| c.join("cli-plugins"))
            .filter(|p| p.exists())
        {
            std::os::unix::fs::symlink(plugins, docker_config.join("cli-plugins")).unwrap();
        }
        MachineEnv {
            dir,
            home,
            docker_config,
        }
    }

    fn command(&self, program: &Path) -> Command {
        let mut cmd = Command::new(program);
        cmd.env("RMACHINE_HOME", &self.home)
            .env("DOCKER_CONFIG", &self.docker_config)
            .env("RMACHINE_BIN", rmachine_bin())
            .env_remove("DOCKER_HOST")
            .env_remove("DOCKER_CONTEXT")
            .stdin(std::process::Stdio::null());
        cmd
    }

    /// Runs `rmachine ARGS`.
    pub fn rmachine(&self, args: &[&str]) -> Output {
        self.command(&rmachine_bin())
            .args(args)
            .output()
            .expect("run rmachine")
    }

    /// Runs `rmachine ARGS` and asserts success; returns stdout.
    pub fn rmachine_ok(&self, args: &[&str]) -> String {
        expect_success("rmachine", args, self.rmachine(args))
    }

    /// Runs `rmachine ARGS`, asserts failure, and returns stderr.
    pub fn rmachine_err(&self, args: &[&str]) -> String {
        let out = self.rmachine(args);
        assert!(
            !out.status.success(),
            "rmachine {} should have failed; stdout: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// Runs the docker CLI with this env's config (its current context), stdin optional.
    pub fn docker(&self, args: &[&str], stdin: Option<&[u8]>, envs: &[(&str, &str)]) -> Output {
        let mut cmd = self.command(Path::new("docker"));
        cmd.args(args).envs(envs.iter().copied());
        output_with_stdin(cmd, stdin)
    }

    /// Runs docker and asserts success; returns stdout.
    pub fn docker_ok(&self, args: &[&str]) -> String {
        self.docker_ok_with(args, None, &[])
    }

    pub fn docker_ok_with(
        &self,
        args: &[&str],
        stdin: Option<&[u8]>,
        envs: &[(&str, &str)],
    ) -> String {
        expect_success("docker", args, self.docker(args, stdin, envs))
    }

    /// `rmachine ls --format json` entry of `name`.
    pub fn listed(&self, name: &str) -> serde_json::Value {
        let out = self.rmachine_ok(&["ls", "--format", "json"]);
        let all: serde_json::Value = serde_json::from_str(&out).expect("ls json");
        all.as_array()
            .and_then(|a| a.iter().find(|m| m["name"] == name).cloned())
            .unwrap_or_else(|| panic!("{name} not listed: {out}"))
    }

    /// The machine's state.json.
    pub fn state(&self, name: &str) -> serde_json::Value {
        let text =
            std::fs::read_to_string(self.home.join("machines").join(name).join("state.json"))
                .unwrap_or_default();
        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null)
    }

    /// The machine's host agent log, for failure messages.
    pub fn hostagent_log(&self, name: &str) -> String {
        std::fs::read_to_string(self.home.join("machines").join(name).join("hostagent.log"))
            .unwrap_or_default()
    }
}

impl Default for MachineEnv {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for MachineEnv {
    fn drop(&mut self) {
        // Leave no VM behind: kill every machine of this env.
        if let Ok(entries) = std::fs::read_dir(self.home.join("machines")) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let _ = self.rmachine(&["stop", "--force", &name]);
            }
        }
    }
}

/// Polls `check` until it succeeds; panics with its last error after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut check: impl FnMut() -> Result<(), String>) {
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    while Instant::now() < deadline {
        match check() {
            Ok(()) => return,
            Err(e) => last = e,
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{what} not reached within {timeout:?}: {last}");
}

/// One HTTP GET to 127.0.0.1:port; the body on a 200.
pub fn http_get(port: u16, path: &str) -> Result<String, String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").map_err(|e| e.to_string())?;
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(|e| e.to_string())?;
    match out.split_once("\r\n\r\n") {
        Some((head, body))
            if head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200") =>
        {
            Ok(body.to_string())
        }
        _ => Err(format!("unexpected reply: {out:?}")),
    }
}

/// A loopback port that is free now.
pub fn free_local_port() -> u16 {
    free_port().port()
}
