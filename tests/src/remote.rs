//! A real remote host for the ssh driver's tests: a Debian trixie VM under QEMU with
//! systemd and openssh-server, booted with the project's own guest kernel (no modules, no
//! initramfs: a raw ext4 root disk on virtio-mmio under `-M microvm`) and its sshd
//! forwarded to an address of this host's loopback (`127.0.0.N`, one per VM, so that the
//! engine's TLS port 2376 is forwarded too and an "address change" moves the forwards
//! to another N through QEMU's monitor).
//!
//! The root disks are built with debootstrap and cached by content hash under
//! `~/.cache/rmachine/ssh-host/` (outside the clone): `base` (no docker: the install
//! through `rmachine create` is exercised on it) and `docker` (the same plus Debian's
//! docker.io, for tests that need an engine already there). Each VM boots from a qcow2
//! overlay of its own. Users: root, `tester` (passwordless sudo) and `nosudo` (none), all
//! logging in with the harness's key (`harness_key` beside the disks).

use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sha2::Digest;

/// Bumped when the recipe below changes in a way the hash does not see.
const RECIPE_VERSION: &str = "ssh-host-1";
const SUITE: &str = "trixie";
const KEYRING: &str = "/usr/share/keyrings/debian-archive-trixie-stable.gpg";
/// Packages of the base host (debootstrap `--variant=minbase` plus these).
const BASE_PACKAGES: &[&str] = &[
    "systemd",
    "systemd-sysv",
    "dbus",
    "openssh-server",
    "sudo",
    "iproute2",
    "procps",
    "ca-certificates",
];
/// What the `docker` variant adds.
const DOCKER_PACKAGES: &[&str] = &["docker.io", "docker-cli"];
const DISK_SIZE: &str = "4G";

/// Brings the network up (QEMU user networking: 10.0.2.15, gateway 10.0.2.2, DNS
/// 10.0.2.3) and sets the clock from the kernel command line (the microVM has no RTC).
const NET_SCRIPT: &str = r#"#!/bin/sh
t=$(sed -n 's/.*rmtest\.time=\([0-9]*\).*/\1/p' /proc/cmdline)
[ -n "$t" ] && date -u -s "@$t" >/dev/null
dev=
for d in /sys/class/net/*; do
  if [ -e "$d/device" ]; then dev=${d##*/}; break; fi
done
ip link set lo up
ip link set "$dev" up
ip addr add 10.0.2.15/24 dev "$dev"
ip route add default via 10.0.2.2
echo "nameserver 10.0.2.3" > /etc/resolv.conf
echo "rmtest: network up on $dev" > /dev/console
"#;

const NET_UNIT: &str = "[Unit]
Description=rmachine test network and clock
DefaultDependencies=no
After=local-fs.target
Before=network.target ssh.service
[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/local/sbin/rmtest-net
[Install]
WantedBy=multi-user.target
";

/// Says on the console when sshd runs.
const READY_UNIT: &str = "[Unit]
Description=rmachine test host ready
After=ssh.service
Wants=ssh.service
[Service]
Type=oneshot
ExecStart=/bin/sh -c 'echo rmtest: ready > /dev/console'
[Install]
WantedBy=multi-user.target
";

/// A built root disk and the key that logs in to it.
#[derive(Debug, Clone)]
pub struct HostImage {
    pub disk: PathBuf,
    pub key: PathBuf,
    /// The host key its sshd offers (`ssh_host_ed25519_key.pub`).
    pub host_key_pub: String,
}

/// The Debian mirror: `RMACHINE_DEBIAN_MIRROR`, else deb.debian.org.
fn mirror() -> String {
    std::env::var("RMACHINE_DEBIAN_MIRROR")
        .ok()
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| "http://deb.debian.org/debian".into())
        .trim_end_matches('/')
        .to_string()
}

fn cache_root() -> PathBuf {
    let paths = rmachine_machine::paths::Paths::from_env().expect("HOME is set");
    paths.cache().join("ssh-host")
}

fn run(cmd: &mut Command, log: &Path) {
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("open build log");
    let status = cmd
        .stdout(log_file.try_clone().unwrap())
        .stderr(log_file)
        .stdin(Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    if !status.success() {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        panic!(
            "{cmd:?} failed ({status}); {} ends:\n{}",
            log.display(),
            lines[lines.len().saturating_sub(30)..].join("\n")
        );
    }
}

/// The base host (no docker), built once and cached.
pub fn base_image() -> HostImage {
    image("base", BASE_PACKAGES)
}

/// The host with Debian's docker.io installed (enabled, not yet started).
pub fn docker_image() -> HostImage {
    let packages: Vec<&str> = BASE_PACKAGES
        .iter()
        .chain(DOCKER_PACKAGES)
        .copied()
        .collect();
    image("docker", &packages)
}

fn image(variant: &str, packages: &[&str]) -> HostImage {
    let mut h = sha2::Sha256::new();
    for part in [
        RECIPE_VERSION,
        SUITE,
        &mirror(),
        NET_SCRIPT,
        NET_UNIT,
        READY_UNIT,
        DISK_SIZE,
    ] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    for p in packages {
        h.update(p.as_bytes());
        h.update([0]);
    }
    let key = hex::encode(h.finalize());
    let root = cache_root();
    let dir = root.join(format!("{variant}-{}", &key[..16]));
    let image = HostImage {
        disk: dir.join("root.img"),
        key: root.join("harness_key"),
        host_key_pub: String::new(),
    };
    std::fs::create_dir_all(&root).expect("create the ssh-host cache");
    ensure_harness_key(&image.key);
    if !dir.join(".complete").exists() {
        build(&dir, packages, &image.key);
    }
    HostImage {
        host_key_pub: std::fs::read_to_string(dir.join("ssh_host_ed25519_key.pub"))
            .expect("the image's host key"),
        ..image
    }
}

fn ensure_harness_key(key: &Path) {
    if key.exists() {
        return;
    }
    let tmp = key.with_extension("partial");
    let _ = std::fs::remove_file(&tmp);
    let _ = std::fs::remove_file(tmp.with_extension("partial.pub"));
    let status = Command::new("ssh-keygen")
        .args([
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            "rmachine-test-harness",
            "-f",
        ])
        .arg(&tmp)
        .status()
        .expect("run ssh-keygen (Debian package openssh-client)");
    assert!(status.success(), "ssh-keygen failed");
    std::fs::rename(tmp.with_extension("partial.pub"), key.with_extension("pub")).unwrap();
    std::fs::rename(&tmp, key).unwrap();
}

fn build(dir: &Path, packages: &[&str], key: &Path) {
    let started = Instant::now();
    eprintln!(
        "building the remote host disk {} (debootstrap {SUITE}; cached afterwards)",
        dir.display()
    );
    let tmp = dir.with_extension("partial");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).unwrap();
    let log = tmp.join("build.log");
    let rootfs = tmp.join("rootfs");
    let debs = cache_root().join("debs");
    std::fs::create_dir_all(&debs).unwrap();
    run(
        Command::new("debootstrap")
            .arg("--variant=minbase")
            .arg(format!("--include={}", packages.join(",")))
            .arg(format!("--keyring={KEYRING}"))
            .arg(format!("--cache-dir={}", debs.display()))
            .arg(SUITE)
            .arg(&rootfs)
            .arg(mirror()),
        &log,
    );
    let write = |path: &str, text: &str, mode: u32| {
        use std::os::unix::fs::PermissionsExt;
        let p = rootfs.join(path.trim_start_matches('/'));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    write("/usr/local/sbin/rmtest-net", NET_SCRIPT, 0o755);
    write("/etc/systemd/system/rmtest-net.service", NET_UNIT, 0o644);
    write(
        "/etc/systemd/system/rmtest-ready.service",
        READY_UNIT,
        0o644,
    );
    write("/etc/hostname", "rtest\n", 0o644);
    write(
        "/etc/hosts",
        "127.0.0.1 localhost\n127.0.1.1 rtest\n",
        0o644,
    );
    write("/etc/fstab", "/dev/vda / ext4 defaults 0 1\n", 0o644);
    write(
        "/etc/apt/sources.list",
        &format!("deb {} {SUITE} main\n", mirror()),
        0o644,
    );
    write(
        "/etc/sudoers.d/tester",
        "tester ALL=(ALL) NOPASSWD:ALL\n",
        0o440,
    );
    let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    let chroot = |args: &[&str]| {
        run(Command::new("chroot").arg(&rootfs).args(args), &log);
    };
    for user in ["tester", "nosudo"] {
        chroot(&["useradd", "-m", "-s", "/bin/bash", user]);
    }
    for home in ["/root", "/home/tester", "/home/nosudo"] {
        write(&format!("{home}/.ssh/authorized_keys"), &public, 0o600);
    }
    chroot(&["chown", "-R", "tester:tester", "/home/tester/.ssh"]);
    chroot(&["chown", "-R", "nosudo:nosudo", "/home/nosudo/.ssh"]);
    for unit in ["rmtest-net.service", "rmtest-ready.service"] {
        let link = rootfs
            .join("etc/systemd/system/multi-user.target.wants")
            .join(unit);
        std::fs::create_dir_all(link.parent().unwrap()).unwrap();
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(format!("/etc/systemd/system/{unit}"), &link).unwrap();
    }
    // The package lists are there already, so apt in the VM starts from a known state.
    let _ = std::fs::remove_dir_all(rootfs.join("var/cache/apt/archives"));
    std::fs::create_dir_all(rootfs.join("var/cache/apt/archives/partial")).unwrap();
    std::fs::copy(
        rootfs.join("etc/ssh/ssh_host_ed25519_key.pub"),
        tmp.join("ssh_host_ed25519_key.pub"),
    )
    .expect("openssh-server made the host keys");
    let disk = tmp.join("root.img");
    run(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", "root", "-d"])
            .arg(&rootfs)
            .arg(&disk)
            .arg(DISK_SIZE),
        &log,
    );
    std::fs::remove_dir_all(&rootfs).unwrap();
    std::fs::write(tmp.join(".complete"), "").unwrap();
    let _ = std::fs::remove_dir_all(dir);
    std::fs::rename(&tmp, dir).unwrap();
    eprintln!(
        "remote host disk built in {:.0} s",
        started.elapsed().as_secs_f64()
    );
}

/// A loopback address of this host no other test VM uses, with `port` free on it.
fn free_loopback(ports: &[u16]) -> Ipv4Addr {
    for _ in 0..200 {
        let n: u8 = rand::random::<u8>() % 200 + 20;
        let ip = Ipv4Addr::new(127, 0, 0, n);
        let free = ports
            .iter()
            .all(|&p| TcpListener::bind(SocketAddrV4::new(ip, p)).is_ok());
        if free {
            return ip;
        }
    }
    panic!("no free loopback address for a test host");
}

/// The SSH port of the test hosts on their loopback address.
pub const SSH_PORT: u16 = 2222;

/// One booted remote host.
pub struct RemoteHost {
    pub dir: tempfile::TempDir,
    pub image: HostImage,
    pub addr: Ipv4Addr,
    overlay: PathBuf,
    child: Option<Child>,
    pub booted_in: Duration,
}

impl RemoteHost {
    /// Boots `image` (a fresh overlay) and waits for its sshd.
    pub fn boot(image: &HostImage) -> RemoteHost {
        let dir = tempfile::Builder::new()
            .prefix("rmhost")
            .tempdir_in("/tmp")
            .expect("temp dir");
        let overlay = dir.path().join("overlay.qcow2");
        let status = Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
            .arg(&image.disk)
            .arg(&overlay)
            .status()
            .expect("run qemu-img (Debian package qemu-utils)");
        assert!(status.success(), "qemu-img create failed");
        let mut host = RemoteHost {
            dir,
            image: image.clone(),
            addr: Ipv4Addr::LOCALHOST,
            overlay,
            child: None,
            booted_in: Duration::ZERO,
        };
        host.start(free_loopback(&[
            SSH_PORT,
            rmachine_machine::ssh::ENGINE_TLS_PORT,
        ]));
        host
    }

    fn start(&mut self, addr: Ipv4Addr) {
        self.addr = addr;
        let (_, image_dir) = crate::image();
        let kernel = image_dir.join("bzImage");
        let console = self.console_log();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let mut cmd = Command::new(rmachine_machine::qemu::binary(
            rmachine_machine::platform::Arch::Amd64,
        ));
        let accel = match rmachine_machine::accel::choose().accel {
            rmachine_machine::accel::Accel::Tcg => "tcg,thread=single".to_string(),
            other => other.as_str().to_string(),
        };
        let cpu = if accel.starts_with("tcg") {
            "max"
        } else {
            "host"
        };
        cmd.args(["-M", "microvm,acpi=off,rtc=off,pcie=off", "-accel", &accel])
            .args(["-cpu", cpu, "-smp", "2", "-m", "1536"])
            .args(["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"])
            .arg("-serial")
            .arg(format!("file:{}", console.display()))
            .arg("-kernel")
            .arg(&kernel)
            .arg("-append")
            .arg(format!(
                "console=ttyS0 root=/dev/vda rw rootfstype=ext4 init=/lib/systemd/systemd panic=-1 reboot=t rmtest.time={now} systemd.show_status=false"
            ))
            .arg("-drive")
            .arg(format!(
                "id=root,file={},format=qcow2,if=none,cache=writeback,discard=unmap",
                self.overlay.display()
            ))
            .args(["-device", "virtio-blk-device,drive=root"])
            .arg("-netdev")
            .arg(format!(
                "user,id=net0,hostfwd=tcp:{addr}:{SSH_PORT}-:22,hostfwd=tcp:{addr}:{tls}-:{tls}",
                tls = rmachine_machine::ssh::ENGINE_TLS_PORT
            ))
            .args(["-device", "virtio-net-device,netdev=net0"])
            .arg("-monitor")
            .arg(format!(
                "unix:{},server=on,wait=off",
                self.dir.path().join("monitor.sock").display()
            ))
            .args([
                "-object",
                "rng-random,id=rng0,filename=/dev/urandom",
                "-device",
                "virtio-rng-device,rng=rng0",
            ])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(self.dir.path().join("qemu.out")).unwrap())
            .stderr(std::fs::File::create(self.dir.path().join("qemu.err")).unwrap());
        let started = Instant::now();
        self.child = Some(cmd.spawn().expect("start qemu-system-x86_64"));
        self.wait_ssh(Duration::from_secs(600));
        self.booted_in = started.elapsed();
        eprintln!(
            "remote host up at {} in {:.1} s",
            self.addr,
            self.booted_in.as_secs_f64()
        );
    }

    pub fn console_log(&self) -> PathBuf {
        self.dir.path().join("console.log")
    }

    /// The console's last lines, for failure messages.
    pub fn console_tail(&self) -> String {
        let text = String::from_utf8_lossy(&std::fs::read(self.console_log()).unwrap_or_default())
            .into_owned();
        let lines: Vec<&str> = text.lines().collect();
        format!(
            "--- remote host console (last 40 lines) ---\n{}\n--- qemu stderr ---\n{}",
            lines[lines.len().saturating_sub(40)..].join("\n"),
            std::fs::read_to_string(self.dir.path().join("qemu.err")).unwrap_or_default()
        )
    }

    /// Waits until sshd greets on the forwarded port.
    pub fn wait_ssh(&mut self, timeout: Duration) {
        use std::io::Read;
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!(
                    "the remote host's QEMU exited ({status})\n{}",
                    self.console_tail()
                );
            }
            if let Ok(mut s) = TcpStream::connect_timeout(
                &SocketAddrV4::new(self.addr, SSH_PORT).into(),
                Duration::from_secs(2),
            ) {
                let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                let mut banner = [0u8; 8];
                if s.read_exact(&mut banner).is_ok() && banner.starts_with(b"SSH-2.0") {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        panic!(
            "the remote host's sshd did not answer within {timeout:?}\n{}",
            self.console_tail()
        );
    }

    /// `user@127.0.0.N:2222`.
    pub fn target(&self, user: &str) -> String {
        format!("{user}@{}:{SSH_PORT}", self.addr)
    }

    /// Runs `command` on the host as `user` with the system's ssh client.
    pub fn ssh(&self, user: &str, command: &str) -> Output {
        Command::new("ssh")
            .args([
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
            ])
            .args([
                "-o",
                "BatchMode=yes",
                "-o",
                "LogLevel=ERROR",
                "-o",
                "ConnectTimeout=20",
            ])
            .arg("-i")
            .arg(&self.image.key)
            .arg("-p")
            .arg(SSH_PORT.to_string())
            .arg(format!("{user}@{}", self.addr))
            .arg(command)
            .env_remove("SSH_AUTH_SOCK")
            .stdin(Stdio::null())
            .output()
            .expect("run ssh (Debian package openssh-client)")
    }

    /// Runs `command` as root and asserts success; returns stdout.
    pub fn root_ok(&self, command: &str) -> String {
        let out = self.ssh("root", command);
        assert!(
            out.status.success(),
            "`{command}` on the remote host failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Moves the host to a new address of this computer's loopback: its sshd and TLS
    /// forwards are added there and removed from the old address (QEMU's monitor), so
    /// that to its clients the host's address changed, without a reboot.
    pub fn move_to_new_address(&mut self) {
        let old = self.addr;
        let mut new = free_loopback(&[SSH_PORT, rmachine_machine::ssh::ENGINE_TLS_PORT]);
        while new == old {
            new = free_loopback(&[SSH_PORT, rmachine_machine::ssh::ENGINE_TLS_PORT]);
        }
        for port in [SSH_PORT, rmachine_machine::ssh::ENGINE_TLS_PORT] {
            let guest = if port == SSH_PORT { 22 } else { port };
            self.monitor(&format!("hostfwd_add net0 tcp:{new}:{port}-:{guest}"));
            self.monitor(&format!("hostfwd_remove net0 tcp:{old}:{port}"));
        }
        self.addr = new;
        self.wait_ssh(Duration::from_secs(60));
        eprintln!("remote host moved from {old} to {new}");
    }

    /// Runs one QEMU monitor command; panics when QEMU says it failed.
    fn monitor(&self, command: &str) {
        use std::io::{Read, Write};
        let mut s = std::os::unix::net::UnixStream::connect(self.dir.path().join("monitor.sock"))
            .expect("connect to QEMU's monitor");
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut banner = [0u8; 4096];
        let _ = s.read(&mut banner);
        writeln!(s, "{command}").unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let mut reply = vec![0u8; 4096];
        let n = s.read(&mut reply).unwrap_or(0);
        let reply = String::from_utf8_lossy(&reply[..n]);
        assert!(
            !reply.to_lowercase().contains("invalid") && !reply.contains("Could not"),
            "QEMU monitor `{command}`: {reply}"
        );
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RemoteHost {
    fn drop(&mut self) {
        self.kill();
    }
}
