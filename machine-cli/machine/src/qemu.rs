//! The QEMU command line for a guest (`-M microvm`, virtio-mmio devices, which QEMU also
//! announces on the kernel command line): the `qemu` driver's engine, and the real-VM
//! path of the tests where hardware KVM is missing.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;

use crate::accel::Accel;

/// Everything QEMU needs to boot one machine.
#[derive(Debug, Clone)]
pub struct QemuVm {
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
    /// QEMU's QMP control socket.
    pub qmp_socket: Option<PathBuf>,
    /// QEMU's pid file.
    pub pid_file: Option<PathBuf>,
    /// Shared folders: vhost-user-fs devices fed by virtiofsd over these sockets.
    pub shares: Vec<QemuShare>,
    /// The user-mode NIC's MAC, when other NICs must be told apart from it.
    pub primary_mac: Option<String>,
    /// NICs on networks between machines: each a stream socket of a switch.
    pub nics: Vec<QemuNic>,
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

/// The QEMU binary for this host's architecture.
pub const QEMU: &str = "qemu-system-x86_64";

impl QemuVm {
    /// The full command. A guest reset ends QEMU (`-no-reboot`): the agent powers off by
    /// resetting, as a microVM without ACPI has no other way.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(QEMU);
        let mut machine = "microvm,acpi=off,rtc=off,pcie=off".to_string();
        if !self.shares.is_empty() {
            // vhost-user devices need the guest memory shared with virtiofsd.
            machine.push_str(",memory-backend=mem");
            cmd.args([
                "-object",
                &format!(
                    "memory-backend-memfd,id=mem,size={}M,share=on",
                    self.memory_mib
                ),
            ]);
        }
        // Software emulation runs the vCPUs on one host thread: with one thread per vCPU
        // (MTTCG) a guest kernel's live code patching (static keys, `text_poke_bp`) was seen to
        // hit a vCPU still running the old code, an `int3` the kernel did not place: "Oops:
        // int3" and a panic, under a `docker build` that enabled a static key.
        let accel = match self.accel {
            Accel::Tcg => "tcg,thread=single".to_string(),
            other => other.as_str().to_string(),
        };
        cmd.args(["-M", &machine, "-accel", &accel]);
        cmd.args([
            "-cpu",
            if self.accel == Accel::Tcg {
                "max"
            } else {
                "host"
            },
        ]);
        cmd.args([
            "-smp",
            &self.cpus.to_string(),
            "-m",
            &format!("{}M", self.memory_mib),
        ]);
        cmd.args(["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"]);
        cmd.arg("-serial")
            .arg(format!("file:{}", self.console_log.display()));
        cmd.arg("-kernel").arg(&self.kernel);
        cmd.arg("-append").arg(format!("{} reboot=t", self.cmdline));
        let disks = [
            ("root", &self.rootfs, true),
            ("data", &self.data_disk, false),
            ("config", &self.config_disk, true),
        ];
        for (id, path, read_only) in disks {
            let ro = if read_only { ",readonly=on" } else { "" };
            cmd.arg("-drive").arg(format!(
                "id={id},file={},format=raw,if=none,cache=writeback,discard=unmap{ro}",
                escape(path)
            ));
            cmd.args(["-device", &format!("virtio-blk-device,drive={id}")]);
        }
        let mut netdev = "user,id=net0".to_string();
        for (host, guest_port) in &self.forwards {
            netdev.push_str(&format!(
                ",hostfwd=tcp:{}:{}-:{guest_port}",
                host.ip(),
                host.port()
            ));
        }
        let mut primary = "virtio-net-device,netdev=net0".to_string();
        if let Some(mac) = &self.primary_mac {
            primary.push_str(&format!(",mac={mac}"));
        }
        cmd.args(["-netdev", &netdev, "-device", &primary]);
        // Without a vnet header on a stream netdev, QEMU offers the guest no checksum or
        // segmentation offloads: the guest computes every checksum (VXLAN needs them).
        for (i, nic) in self.nics.iter().enumerate() {
            let id = format!("nic{}", i + 1);
            cmd.args([
                "-netdev",
                &format!(
                    "stream,id={id},server=off,addr.type=unix,addr.path={}",
                    escape(&nic.socket)
                ),
                "-device",
                &format!("virtio-net-device,netdev={id},mac={}", nic.mac),
            ]);
        }
        cmd.args([
            "-object",
            "rng-random,id=rng0,filename=/dev/urandom",
            "-device",
            "virtio-rng-device,rng=rng0",
            // Memory the guest frees goes back to the host (free page reporting), as under
            // rmachine-vmm: an idle machine does not keep the peak of its last build.
            "-device",
            "virtio-balloon-device,free-page-reporting=on",
        ]);
        for (i, share) in self.shares.iter().enumerate() {
            cmd.arg("-chardev")
                .arg(format!("socket,id=fs{i},path={}", escape(&share.socket)));
            cmd.args([
                "-device",
                &format!("vhost-user-fs-device,chardev=fs{i},tag={}", share.tag),
            ]);
        }
        if let Some(cid) = self.vsock_cid {
            cmd.args(["-device", &format!("vhost-vsock-device,guest-cid={cid}")]);
        }
        if let Some(qmp) = &self.qmp_socket {
            cmd.arg("-qmp")
                .arg(format!("unix:{},server=on,wait=off", escape(qmp)));
        }
        if let Some(pid) = &self.pid_file {
            cmd.arg("-pidfile").arg(pid);
        }
        cmd
    }
}

/// QEMU option values separate with commas; a literal comma is doubled.
fn escape(path: &std::path::Path) -> String {
    path.display().to_string().replace(',', ",,")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm() -> QemuVm {
        QemuVm {
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
            pid_file: None,
            shares: vec![],
            primary_mac: None,
            nics: vec![],
        }
    }

    #[test]
    fn test_command_has_disks_in_order_and_forwards() {
        let cmd = vm().command();
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
            joined.contains("hostfwd=tcp:127.0.0.1:41000-:1024"),
            "{joined}"
        );
        assert!(joined.contains("-no-reboot"));
        assert!(
            joined.contains("virtio-balloon-device,free-page-reporting=on"),
            "{joined}"
        );
        assert!(joined.contains("reboot=t"));
        assert!(args.windows(2).any(|w| w[0] == "-cpu" && w[1] == "max"));
        assert!(
            args.windows(2)
                .any(|w| w[0] == "-accel" && w[1] == "tcg,thread=single"),
            "{joined}"
        );
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
        let joined: Vec<String> = v
            .command()
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let joined = joined.join(" ");
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
    fn test_network_nics_are_stream_netdevs_with_their_macs() {
        let mut v = vm();
        v.primary_mac = Some("52:54:00:12:34:56".into());
        v.nics = vec![QemuNic {
            mac: "02:72:6d:01:02:03".into(),
            socket: "/h/networks/swarm/switch.sock".into(),
        }];
        let args: Vec<String> = v
            .command()
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let joined = args.join(" ");
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
