//! The QEMU command line for a guest: the `qemu` driver's engine, and the real-VM path of
//! the tests where hardware KVM is missing.
//!
//! - amd64 guests: `qemu-system-x86_64 -M microvm`, virtio-mmio devices that QEMU also
//!   announces on the kernel command line; a triple fault (`reboot=t`) resets.
//! - arm64 guests: `qemu-system-aarch64 -M virt`, virtio-mmio devices from the device
//!   tree, each pinned to its transport (`bus=virtio-mmio-bus.N`) so that the disks are
//!   `vda`, `vdb`, `vdc` (root, data, config) in that order; PSCI resets.
//!
//! The host platform is an argument ([`QemuVm::host`]), not a `cfg`, so one test run
//! checks the command every platform gets.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;

use crate::accel::Accel;
use crate::platform::{Arch, HostOs, Platform};

/// Everything QEMU needs to boot one machine.
#[derive(Debug, Clone)]
pub struct QemuVm {
    /// The guest's architecture (the image's).
    pub arch: Arch,
    /// The host QEMU runs on.
    pub host: Platform,
    pub kernel: PathBuf,
    /// Base kernel command line (from the image manifest).
    pub cmdline: String,
    /// Read-only root filesystem: `/dev/vda`.
    pub rootfs: PathBuf,
    /// Data disk: `/dev/vdb`.
    pub data_disk: PathBuf,
    /// Config disk: `/dev/vdc`.
    pub config_disk: PathBuf,
    pub cpus: u32,
    pub memory_mib: u32,
    pub accel: Accel,
    /// Serial console output.
    pub console_log: PathBuf,
    /// Host loopback address → guest TCP port forwards (user-mode networking).
    pub forwards: Vec<(SocketAddr, u16)>,
    /// AF_VSOCK guest CID through the host's vhost-vsock, when available.
    pub vsock_cid: Option<u32>,
    /// QEMU's QMP control socket (commands: a save, a resume).
    pub qmp_socket: Option<PathBuf>,
    /// A second QMP socket, held open for QEMU's events (a full host disk). A QMP socket
    /// serves one client at a time: one held open would keep every other command out.
    pub qmp_events_socket: Option<PathBuf>,
    /// QEMU's pid file.
    pub pid_file: Option<PathBuf>,
    /// Shared folders: vhost-user-fs devices fed by virtiofsd over these sockets.
    pub shares: Vec<QemuShare>,
    /// The user-mode NIC's MAC, when other NICs must be told apart from it.
    pub primary_mac: Option<String>,
    /// NICs on networks between machines: each a stream socket of a switch.
    pub nics: Vec<QemuNic>,
    /// Start paused, waiting for a saved state (`-incoming defer`: QMP's
    /// `migrate-incoming` then names it).
    pub incoming: bool,
}

/// A NIC on a network between machines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuNic {
    pub mac: String,
    /// The network switch's unix socket (4-byte length framing, as `-netdev stream`).
    pub socket: PathBuf,
}

/// One virtio-fs device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuShare {
    /// The tag the guest mounts.
    pub tag: String,
    /// virtiofsd's vhost-user socket.
    pub socket: PathBuf,
}

/// Why a QEMU command cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum QemuError {
    #[error("{what} needs a Linux host (this one is {host})")]
    NeedsLinux { what: &'static str, host: Platform },
}

/// The QEMU binary that runs guests of `arch`.
pub fn binary(arch: Arch) -> &'static str {
    match arch {
        Arch::Amd64 => "qemu-system-x86_64",
        Arch::Arm64 => "qemu-system-aarch64",
    }
}

/// The Debian package with [`binary`].
pub fn debian_package(arch: Arch) -> &'static str {
    match arch {
        Arch::Amd64 => "qemu-system-x86",
        Arch::Arm64 => "qemu-system-arm",
    }
}

impl QemuVm {
    /// The full command. A guest reset ends QEMU (`-no-reboot`): the agent powers off by
    /// resetting, as a microVM without ACPI has no other way (and arm64 resets through
    /// PSCI the same way).
    pub fn command(&self) -> Result<Command, QemuError> {
        let mut cmd = Command::new(binary(self.arch));
        cmd.args(self.args()?);
        Ok(cmd)
    }

    /// The arguments of [`QemuVm::command`].
    pub fn args(&self) -> Result<Vec<String>, QemuError> {
        if self.host.os != HostOs::Linux {
            // vhost-user devices need the guest memory in a memfd; vhost-vsock is a Linux
            // kernel device.
            if !self.shares.is_empty() {
                return Err(QemuError::NeedsLinux {
                    what: "sharing folders through virtio-fs",
                    host: self.host,
                });
            }
            if self.vsock_cid.is_some() {
                return Err(QemuError::NeedsLinux {
                    what: "vhost-vsock",
                    host: self.host,
                });
            }
        }
        let mut a = Args::default();
        let mut machine = match self.arch {
            Arch::Amd64 => "microvm,acpi=off,rtc=off,pcie=off".to_string(),
            // Hardware virtualization gets the host's GIC (GICv3-only hosts, most arm64
            // servers and Apple Silicon, have no GICv2); TCG keeps the default GICv2.
            Arch::Arm64 if self.accel != Accel::Tcg => "virt,gic-version=max".to_string(),
            Arch::Arm64 => "virt".to_string(),
        };
        if !self.shares.is_empty() {
            // vhost-user devices need the guest memory shared with virtiofsd.
            machine.push_str(",memory-backend=mem");
            a.pair(
                "-object",
                format!(
                    "memory-backend-memfd,id=mem,size={}M,share=on",
                    self.memory_mib
                ),
            );
        }
        a.pair("-M", machine);
        a.pair("-accel", self.accel_arg());
        a.pair("-cpu", self.cpu_arg());
        a.pair("-smp", self.cpus.to_string());
        a.pair("-m", format!("{}M", self.memory_mib));
        a.words(&["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"]);
        a.pair("-serial", format!("file:{}", self.console_log.display()));
        a.pair("-kernel", self.kernel.display().to_string());
        a.pair(
            "-append",
            match self.arch {
                // x86's reset: a triple fault, which `-no-reboot` turns into QEMU's exit.
                Arch::Amd64 => format!("{} reboot=t", self.cmdline),
                Arch::Arm64 => self.cmdline.clone(),
            },
        );
        let disks = [
            ("root", &self.rootfs, true),
            ("data", &self.data_disk, false),
            ("config", &self.config_disk, true),
        ];
        let mut bus = Buses::new(self.arch);
        for (id, path, read_only) in disks {
            // A write the host cannot make for lack of space pauses the VM (the request
            // waits, retried when it continues) instead of failing in the guest; other
            // errors reach the guest. QEMU's defaults, stated: the host agent relies on
            // the pause (hostagent's host_disk.rs).
            let ro = if read_only {
                ",readonly=on"
            } else {
                ",werror=enospc,rerror=report"
            };
            a.pair(
                "-drive",
                format!(
                    "id={id},file={},format=raw,if=none,cache=writeback,discard=unmap{ro}",
                    escape(path)
                ),
            );
            a.pair("-device", bus.pin(format!("virtio-blk-device,drive={id}")));
        }
        let mut netdev = "user,id=net0".to_string();
        for (host, guest_port) in &self.forwards {
            netdev.push_str(&format!(
                ",hostfwd=tcp:{}:{}-:{guest_port}",
                host.ip(),
                host.port()
            ));
        }
        a.pair("-netdev", netdev);
        let mut primary = "virtio-net-device,netdev=net0".to_string();
        if let Some(mac) = &self.primary_mac {
            primary.push_str(&format!(",mac={mac}"));
        }
        a.pair("-device", bus.pin(primary));
        // Without a vnet header on a stream netdev, QEMU offers the guest no checksum or
        // segmentation offloads: the guest computes every checksum (VXLAN needs them).
        for (i, nic) in self.nics.iter().enumerate() {
            let id = format!("nic{}", i + 1);
            a.pair(
                "-netdev",
                format!(
                    "stream,id={id},server=off,addr.type=unix,addr.path={}",
                    escape(&nic.socket)
                ),
            );
            a.pair(
                "-device",
                bus.pin(format!("virtio-net-device,netdev={id},mac={}", nic.mac)),
            );
        }
        a.pair("-object", "rng-random,id=rng0,filename=/dev/urandom".into());
        a.pair("-device", bus.pin("virtio-rng-device,rng=rng0".into()));
        // Memory the guest frees goes back to the host (free page reporting), as under
        // rmachine-vmm: an idle machine does not keep the peak of its last build.
        a.pair(
            "-device",
            bus.pin("virtio-balloon-device,free-page-reporting=on".into()),
        );
        for (i, share) in self.shares.iter().enumerate() {
            a.pair(
                "-chardev",
                format!("socket,id=fs{i},path={}", escape(&share.socket)),
            );
            a.pair(
                "-device",
                bus.pin(format!(
                    "vhost-user-fs-device,chardev=fs{i},tag={}",
                    share.tag
                )),
            );
        }
        if let Some(cid) = self.vsock_cid {
            a.pair(
                "-device",
                bus.pin(format!("vhost-vsock-device,guest-cid={cid}")),
            );
        }
        for qmp in [&self.qmp_socket, &self.qmp_events_socket]
            .into_iter()
            .flatten()
        {
            a.pair("-qmp", format!("unix:{},server=on,wait=off", escape(qmp)));
        }
        if let Some(pid) = &self.pid_file {
            a.pair("-pidfile", pid.display().to_string());
        }
        if self.incoming {
            a.pair("-incoming", "defer".into());
        }
        Ok(a.0)
    }

    /// The VM's devices, for a saved state to be loaded only into the same: the arguments
    /// without what differs from one start to the next (the guest link's host ports,
    /// waiting for a saved state).
    pub fn devices(&self) -> Result<Vec<String>, QemuError> {
        let mut same = self.clone();
        same.incoming = false;
        for (host, _) in &mut same.forwards {
            host.set_port(0);
        }
        same.args()
    }

    fn accel_arg(&self) -> String {
        match (self.accel, self.arch) {
            // Software emulation of x86 runs the vCPUs on one host thread: with one thread
            // per vCPU (MTTCG) a guest kernel's live code patching (static keys,
            // `text_poke_bp`) was seen to hit a vCPU still running the old code, an `int3`
            // the kernel did not place: "Oops: int3" and a panic, under a `docker build`
            // that enabled a static key. arm64 has no such `int3` patching: it keeps MTTCG.
            (Accel::Tcg, Arch::Amd64) => "tcg,thread=single".into(),
            (other, _) => other.as_str().into(),
        }
    }

    fn cpu_arg(&self) -> String {
        match (self.accel, self.arch) {
            (Accel::Tcg, Arch::Amd64) => "max".into(),
            // QEMU's architected pointer authentication (QARMA5) is slow to emulate and
            // Debian's userspace signs every return: the implementation-defined algorithm
            // halves the time to the engine ready (ARM64.md).
            (Accel::Tcg, Arch::Arm64) => "max,pauth-impdef=on".into(),
            _ => "host".into(),
        }
    }
}

/// The command's arguments as they are added.
#[derive(Default)]
struct Args(Vec<String>);

impl Args {
    fn pair(&mut self, flag: &str, value: String) {
        self.0.push(flag.to_string());
        self.0.push(value);
    }

    fn words(&mut self, words: &[&str]) {
        self.0.extend(words.iter().map(|w| w.to_string()));
    }
}

/// The virtio-mmio transports of `-M virt`, handed out in order. Unpinned, `-M virt`
/// gives the first device the highest-addressed transport and Linux names disks in
/// address order (the root would be `vdc`); `-M microvm` needs no pinning.
struct Buses {
    next: Option<u32>,
}

impl Buses {
    fn new(arch: Arch) -> Buses {
        Buses {
            next: (arch == Arch::Arm64).then_some(0),
        }
    }

    fn pin(&mut self, device: String) -> String {
        match &mut self.next {
            Some(n) => {
                let pinned = format!("{device},bus=virtio-mmio-bus.{n}");
                *n += 1;
                pinned
            }
            None => device,
        }
    }
}

/// QEMU option values separate with commas; a literal comma is doubled.
fn escape(path: &std::path::Path) -> String {
    path.display().to_string().replace(',', ",,")
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINUX_X86: Platform = Platform {
        os: HostOs::Linux,
        arch: Arch::Amd64,
    };

    fn vm() -> QemuVm {
        QemuVm {
            arch: Arch::Amd64,
            host: LINUX_X86,
            kernel: "/i/bzImage".into(),
            cmdline: "console=ttyS0".into(),
            rootfs: "/i/rootfs.erofs".into(),
            data_disk: "/m/data,1.img".into(),
            config_disk: "/m/config.img".into(),
            cpus: 2,
            memory_mib: 2048,
            accel: Accel::Tcg,
            console_log: "/m/console.log".into(),
            forwards: vec![("127.0.0.1:41000".parse().unwrap(), 1024)],
            vsock_cid: None,
            qmp_socket: None,
            qmp_events_socket: None,
            pid_file: None,
            shares: vec![],
            primary_mac: None,
            nics: vec![],
            incoming: false,
        }
    }

    fn arm64_vm(host: Platform, accel: Accel) -> QemuVm {
        QemuVm {
            arch: Arch::Arm64,
            host,
            accel,
            kernel: "/i/Image".into(),
            cmdline: "console=ttyAMA0".into(),
            ..vm()
        }
    }

    /// The value after `flag` (the first).
    fn value<'a>(args: &'a [String], flag: &str) -> &'a str {
        args.windows(2)
            .find(|w| w[0] == flag)
            .map(|w| w[1].as_str())
            .unwrap_or_else(|| panic!("no {flag} in {args:?}"))
    }

    /// Every `-device` value, in order.
    fn devices(args: &[String]) -> Vec<&str> {
        args.windows(2)
            .filter(|w| w[0] == "-device")
            .map(|w| w[1].as_str())
            .collect()
    }

    #[test]
    fn test_command_has_disks_in_order_and_forwards() {
        let cmd = vm().command().unwrap();
        assert_eq!(cmd.get_program(), "qemu-system-x86_64");
        let args: Vec<String> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let joined = args.join(" ");
        let root = joined.find("id=root").unwrap();
        let data = joined.find("id=data").unwrap();
        let config = joined.find("id=config").unwrap();
        assert!(root < data && data < config, "{joined}");
        assert!(
            joined.contains("file=/m/data,,1.img"),
            "commas must be doubled: {joined}"
        );
        assert!(
            joined.contains("discard=unmap,werror=enospc,rerror=report"),
            "a full host disk pauses the VM: {joined}"
        );
        assert!(
            joined.contains("hostfwd=tcp:127.0.0.1:41000-:1024"),
            "{joined}"
        );
        assert!(joined.contains("-no-reboot"));
        assert!(
            joined.contains("virtio-balloon-device,free-page-reporting=on"),
            "{joined}"
        );
        assert!(joined.contains("reboot=t"));
        assert!(
            !joined.contains("memory-backend"),
            "no shared memory without shares"
        );
    }

    #[test]
    fn test_shares_get_shared_memory_and_vhost_user_fs() {
        let mut v = vm();
        v.shares = vec![QemuShare {
            tag: "share0".into(),
            socket: "/m/fs0.sock".into(),
        }];
        let joined = v.args().unwrap().join(" ");
        assert!(
            joined.contains("memory-backend-memfd,id=mem,size=2048M,share=on"),
            "{joined}"
        );
        assert!(
            joined.contains("microvm,acpi=off,rtc=off,pcie=off,memory-backend=mem"),
            "{joined}"
        );
        assert!(
            joined.contains("socket,id=fs0,path=/m/fs0.sock"),
            "{joined}"
        );
        assert!(
            joined.contains("vhost-user-fs-device,chardev=fs0,tag=share0"),
            "{joined}"
        );
    }

    #[test]
    fn test_amd64_on_linux_kvm_and_tcg() {
        let mut v = vm();
        v.accel = Accel::Kvm;
        let args = v.args().unwrap();
        assert_eq!(value(&args, "-M"), "microvm,acpi=off,rtc=off,pcie=off");
        assert_eq!(value(&args, "-accel"), "kvm");
        assert_eq!(value(&args, "-cpu"), "host");
        assert_eq!(value(&args, "-append"), "console=ttyS0 reboot=t");
        // microvm places its transports itself: nothing pinned.
        assert!(
            devices(&args).iter().all(|d| !d.contains("bus=")),
            "{args:?}"
        );
        v.accel = Accel::Tcg;
        let args = v.args().unwrap();
        assert_eq!(value(&args, "-accel"), "tcg,thread=single");
        assert_eq!(value(&args, "-cpu"), "max");
    }

    #[test]
    fn test_arm64_on_x86_64_linux_tcg() {
        let mut v = arm64_vm(LINUX_X86, Accel::Tcg);
        v.shares = vec![
            QemuShare {
                tag: "share0".into(),
                socket: "/m/fs0.sock".into(),
            },
            QemuShare {
                tag: "share1".into(),
                socket: "/m/fs1.sock".into(),
            },
        ];
        v.qmp_socket = Some("/m/qmp.sock".into());
        v.qmp_events_socket = Some("/m/qmp-events.sock".into());
        let cmd = v.command().unwrap();
        assert_eq!(cmd.get_program(), "qemu-system-aarch64");
        let args = v.args().unwrap();
        // Two QMP monitors: one for commands, one held open for events.
        let monitors: Vec<&String> = args
            .iter()
            .zip(args.iter().skip(1))
            .filter(|(flag, _)| *flag == "-qmp")
            .map(|(_, v)| v)
            .collect();
        assert_eq!(
            monitors,
            [
                "unix:/m/qmp.sock,server=on,wait=off",
                "unix:/m/qmp-events.sock,server=on,wait=off"
            ]
        );
        assert_eq!(value(&args, "-M"), "virt,memory-backend=mem");
        assert_eq!(value(&args, "-accel"), "tcg", "arm64 keeps MTTCG");
        assert_eq!(value(&args, "-cpu"), "max,pauth-impdef=on");
        assert_eq!(
            value(&args, "-append"),
            "console=ttyAMA0",
            "no x86 reboot=t: arm64 resets through PSCI"
        );
        assert!(args.iter().any(|a| a == "-no-reboot"));
        assert_eq!(
            devices(&args),
            [
                "virtio-blk-device,drive=root,bus=virtio-mmio-bus.0",
                "virtio-blk-device,drive=data,bus=virtio-mmio-bus.1",
                "virtio-blk-device,drive=config,bus=virtio-mmio-bus.2",
                "virtio-net-device,netdev=net0,bus=virtio-mmio-bus.3",
                "virtio-rng-device,rng=rng0,bus=virtio-mmio-bus.4",
                "virtio-balloon-device,free-page-reporting=on,bus=virtio-mmio-bus.5",
                "vhost-user-fs-device,chardev=fs0,tag=share0,bus=virtio-mmio-bus.6",
                "vhost-user-fs-device,chardev=fs1,tag=share1,bus=virtio-mmio-bus.7",
            ]
        );
        let joined = args.join(" ");
        assert!(!joined.contains("microvm") && !joined.contains("acpi=off"));
        assert!(
            joined.contains("hostfwd=tcp:127.0.0.1:41000-:1024"),
            "the TCP carrier as on amd64: {joined}"
        );
    }

    #[test]
    fn test_arm64_on_arm64_linux_kvm_with_vsock() {
        let host = Platform {
            os: HostOs::Linux,
            arch: Arch::Arm64,
        };
        let mut v = arm64_vm(host, Accel::Kvm);
        v.vsock_cid = Some(7);
        let args = v.args().unwrap();
        assert_eq!(value(&args, "-M"), "virt,gic-version=max");
        assert_eq!(value(&args, "-accel"), "kvm");
        assert_eq!(value(&args, "-cpu"), "host");
        assert_eq!(
            devices(&args).last().copied(),
            Some("vhost-vsock-device,guest-cid=7,bus=virtio-mmio-bus.6")
        );
    }

    #[test]
    fn test_arm64_on_macos_hvf() {
        let host = Platform {
            os: HostOs::Macos,
            arch: Arch::Arm64,
        };
        let v = arm64_vm(host, Accel::Hvf);
        let cmd = v.command().unwrap();
        assert_eq!(cmd.get_program(), "qemu-system-aarch64");
        let args = v.args().unwrap();
        assert_eq!(value(&args, "-M"), "virt,gic-version=max");
        assert_eq!(value(&args, "-accel"), "hvf");
        assert_eq!(value(&args, "-cpu"), "host");
        assert_eq!(devices(&args).len(), 6, "{args:?}");
        // Shares (a memfd for vhost-user) and vhost-vsock are Linux's.
        let mut shared = arm64_vm(host, Accel::Hvf);
        shared.shares = vec![QemuShare {
            tag: "share0".into(),
            socket: "/m/fs0.sock".into(),
        }];
        let err = shared.args().unwrap_err().to_string();
        assert!(
            err.contains("virtio-fs") && err.contains("macos aarch64"),
            "{err}"
        );
        let mut vsock = arm64_vm(host, Accel::Hvf);
        vsock.vsock_cid = Some(3);
        assert!(vsock.args().is_err());
    }

    #[test]
    fn test_amd64_on_windows_whpx() {
        let mut v = vm();
        v.host = Platform {
            os: HostOs::Windows,
            arch: Arch::Amd64,
        };
        v.accel = Accel::Whpx;
        let cmd = v.command().unwrap();
        assert_eq!(cmd.get_program(), "qemu-system-x86_64");
        let args = v.args().unwrap();
        assert_eq!(value(&args, "-M"), "microvm,acpi=off,rtc=off,pcie=off");
        assert_eq!(value(&args, "-accel"), "whpx");
        assert_eq!(value(&args, "-cpu"), "host");
        assert_eq!(value(&args, "-append"), "console=ttyS0 reboot=t");
    }

    #[test]
    fn test_amd64_on_arm64_tcg_and_arm64_on_windows_tcg() {
        // An Apple Silicon Mac emulating an amd64 guest.
        let mut v = vm();
        v.host = Platform {
            os: HostOs::Macos,
            arch: Arch::Arm64,
        };
        let args = v.args().unwrap();
        assert_eq!(v.command().unwrap().get_program(), "qemu-system-x86_64");
        assert_eq!(value(&args, "-accel"), "tcg,thread=single");
        assert_eq!(value(&args, "-cpu"), "max");
        // Windows emulating an arm64 guest.
        let v = arm64_vm(
            Platform {
                os: HostOs::Windows,
                arch: Arch::Amd64,
            },
            Accel::Tcg,
        );
        let args = v.args().unwrap();
        assert_eq!(value(&args, "-M"), "virt");
        assert_eq!(value(&args, "-cpu"), "max,pauth-impdef=on");
    }

    #[test]
    fn test_incoming_waits_and_devices_ignore_the_ports_of_a_start() {
        let mut v = vm();
        assert!(!v.args().unwrap().iter().any(|a| a == "-incoming"));
        let devices = v.devices().unwrap();
        v.incoming = true;
        assert_eq!(value(&v.args().unwrap(), "-incoming"), "defer");
        v.forwards = vec![("127.0.0.1:42000".parse().unwrap(), 1024)];
        assert_eq!(v.devices().unwrap(), devices, "same devices on other ports");
        v.memory_mib = 4096;
        assert_ne!(v.devices().unwrap(), devices);
        let mut other_guest_port = vm();
        other_guest_port.forwards = vec![("127.0.0.1:41000".parse().unwrap(), 1025)];
        assert_ne!(other_guest_port.devices().unwrap(), devices);
    }

    #[test]
    fn test_binaries_and_packages() {
        assert_eq!(binary(Arch::Amd64), "qemu-system-x86_64");
        assert_eq!(binary(Arch::Arm64), "qemu-system-aarch64");
        assert_eq!(debian_package(Arch::Arm64), "qemu-system-arm");
        assert_eq!(debian_package(Arch::Amd64), "qemu-system-x86");
    }

    #[test]
    fn test_network_nics_are_stream_netdevs_with_their_macs() {
        let mut v = vm();
        v.primary_mac = Some("52:54:00:12:34:56".into());
        v.nics = vec![QemuNic {
            mac: "02:72:6d:01:02:03".into(),
            socket: "/h/networks/swarm/switch.sock".into(),
        }];
        let joined = v.args().unwrap().join(" ");
        assert!(
            joined.contains("virtio-net-device,netdev=net0,mac=52:54:00:12:34:56"),
            "{joined}"
        );
        assert!(
            joined.contains(
                "stream,id=nic1,server=off,addr.type=unix,addr.path=/h/networks/swarm/switch.sock"
            ),
            "{joined}"
        );
        assert!(
            joined.contains("virtio-net-device,netdev=nic1,mac=02:72:6d:01:02:03"),
            "{joined}"
        );
        let user = joined.find("netdev=net0").unwrap();
        let nic = joined.find("netdev=nic1").unwrap();
        assert!(user < nic, "the user-mode NIC comes first");
    }
}
