//! The guest (L2) inside L1: the guest image's kernel (`/l2/bzImage` in the initramfs) with
//! the image's root filesystem, a data disk and a config disk, which L1 sees as its block
//! devices `/dev/rm-root`, `/dev/rm-data` and `/dev/rm-config` (the init names them after
//! their serials). [`vm_config`] is rmachine-vmm's configuration; [`qemu_argv`] boots the
//! same guest under QEMU `-M microvm -enable-kvm` with the same devices.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use rmachine_protocol::config_disk::{GuestConfig, Mount};

use vmm::config::{
    DiskConfig, FsConfig, KernelConfig, RngConfig, SerialConfig, VmConfig, VsockConfig,
};

/// The CPU feature the harness hides from the guest under both VMMs (see [`vm_config`]).
pub const NESTED_DISABLED_CPU_FEATURE: &str = "tsc_deadline_timer";
/// The guest's RAM in MiB.
pub const L2_MEMORY_MIB: u64 = 1024;
/// The guest kernel's path inside L1.
pub const GUEST_KERNEL: &str = "/l2/bzImage";
/// rmachine-vmm's hybrid vsock socket inside L1.
pub const VSOCK_UDS: &str = "/run/vsock.sock";
/// The guest's vsock CID (both VMMs).
pub const GUEST_CID: u32 = 3;
/// The disks in the order the guest sees them (vda, vdb, vdc), read-only or not.
pub const DISKS: [(&str, bool); 3] = [("root", true), ("data", false), ("config", true)];

/// Writes the guest's data disk (8 GiB sparse) and config disk (a fresh token, `hostname`,
/// `mounts`) into `dir`; returns their paths.
pub fn write_disks(dir: &Path, hostname: &str, mounts: Vec<Mount>) -> (PathBuf, PathBuf) {
    let data = dir.join("data.img");
    crate::sparse_disk(&data, 8);
    let config = GuestConfig {
        version: rmachine_protocol::PROTOCOL_VERSION,
        token: crate::new_token(),
        hostname: hostname.into(),
        data_disk: "/dev/vdb".into(),
        host_time_unix_ns: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock after 1970")
            .as_nanos() as i64,
        host_addr: None,
        mounts,
        ..Default::default()
    };
    let config_disk = dir.join("config.img");
    std::fs::write(&config_disk, config.encode()).expect("write the config disk");
    (data, config_disk)
}

/// Where rmachine-vmm puts the guest console.
pub enum Console {
    /// A file in L1 (created or appended).
    File(PathBuf),
    /// The VMM's stdout.
    Stdout,
}

/// A folder of L1 shared with the guest through virtio-fs.
pub struct Share {
    /// The virtio-fs tag.
    pub tag: String,
    /// virtiofsd's socket in L1.
    pub socket: PathBuf,
}

/// virtiofsd's socket in L1 (`start_virtiofsd` of `l1-setup.sh`).
pub const VIRTIOFSD_SOCKET: &str = "/run/virtiofsd.sock";
/// The virtio-fs tag of L1's shared folder.
pub const SHARE_TAG: &str = "share0";
/// Where the guest mounts L1's shared folder.
pub const L2_SHARE_DIR: &str = "/home/nested-share";

/// L1's shared folder as the VMMs see it: [`SHARE_TAG`] at [`VIRTIOFSD_SOCKET`].
pub fn l1_share() -> Share {
    Share {
        tag: SHARE_TAG.into(),
        socket: VIRTIOFSD_SOCKET.into(),
    }
}

/// L1's shared folder as the guest mounts it (config disk): [`SHARE_TAG`] at [`L2_SHARE_DIR`].
pub fn l1_share_mount() -> Mount {
    Mount {
        tag: SHARE_TAG.into(),
        guest_path: L2_SHARE_DIR.into(),
        read_only: false,
    }
}

/// L1's device node of a disk.
fn disk_path(id: &str) -> String {
    format!("/dev/rm-{id}")
}

/// The guest command line: the image's, a reset through the i8042 on reboot (rmachine-vmm
/// exits on reset), and the debugging extras.
pub fn guest_cmdline(image_cmdline: &str, extra: Option<&str>) -> String {
    let mut cmdline = format!("{image_cmdline} reboot=k");
    // The guest kernel's RTC probing costs one exit per CMOS read: 16-24 s nested.
    if !cmdline.contains("initcall_blacklist=") {
        cmdline.push_str(" initcall_blacklist=cmos_init,early_resume_init");
    }
    if let Some(extra) = extra.filter(|e| !e.trim().is_empty()) {
        cmdline.push(' ');
        cmdline.push_str(extra.trim());
    }
    cmdline
}

/// rmachine-vmm's configuration inside L1: one vCPU, [`L2_MEMORY_MIB`], the three disks, the
/// hybrid vsock socket [`VSOCK_UDS`], an entropy device, and the share if any.
pub fn vm_config(cmdline: String, console: Console, share: Option<Share>) -> VmConfig {
    let serial = match console {
        Console::File(path) => SerialConfig {
            log_path: Some(path),
            stdio: false,
        },
        Console::Stdout => SerialConfig {
            log_path: None,
            stdio: true,
        },
    };
    VmConfig {
        vcpus: Some(1),
        memory_mib: Some(L2_MEMORY_MIB),
        kernel: KernelConfig {
            path: GUEST_KERNEL.into(),
            cmdline: Some(cmdline),
            initrd: None,
        },
        // The TSC-deadline timer (which rmachine-vmm offers where KVM has it) stalled a guest
        // in L1 once for 100 s ("rcu_preempt kthread timer wakeup didn't happen"): L1's KVM
        // turns deadlines into host times through L1's own TSC calibration, made under TCG on
        // a loaded machine. The harness keeps the guest on the LAPIC timer, as before.
        cpu: Some(vmm::config::CpuConfig {
            disable_features: vec![NESTED_DISABLED_CPU_FEATURE.into()],
        }),
        serial: Some(serial),
        disks: DISKS
            .iter()
            .map(|&(id, read_only)| DiskConfig {
                id: id.to_string(),
                path: PathBuf::from(disk_path(id)),
                read_only,
                slot: None,
            })
            .collect(),
        vsock: Some(VsockConfig {
            guest_cid: GUEST_CID,
            uds_path: VSOCK_UDS.into(),
            slot: None,
        }),
        rng: Some(RngConfig::default()),
        net: None,
        balloon: None,
        filesystems: share
            .into_iter()
            .map(|s| FsConfig {
                tag: s.tag,
                socket_path: s.socket,
                slot: None,
            })
            .collect(),
        api_socket: None,
        snapshot_dir: None,
        jail: None,
        extra_nets: Vec::new(),
    }
}

/// `cmdline` with its `reboot=` words replaced by `reboot=<how>`.
pub fn with_reboot(cmdline: &str, how: &str) -> String {
    let words = cmdline
        .split_whitespace()
        .filter(|w| !w.starts_with("reboot="));
    words
        .chain(std::iter::once(format!("reboot={how}").as_str()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// QEMU booting the guest of [`vm_config`] inside L1: `-M microvm -enable-kvm -cpu host`,
/// one vCPU, [`L2_MEMORY_MIB`], the same disks (with the same serials) as virtio-mmio
/// devices, a vhost-vsock device with [`GUEST_CID`], an entropy device, and the console on
/// stdout. The command line is `cmdline` except for the reset: microvm has no i8042, so the
/// guest resets by triple fault (`reboot=t`), and `-no-reboot` makes that QEMU's exit.
/// With a `share`, guest memory is a shared memfd and a vhost-user-fs device connects to
/// virtiofsd's socket, as under rmachine-vmm.
pub fn qemu_argv(qemu: &str, cmdline: &str, share: Option<&Share>) -> Vec<String> {
    let machine = match share {
        Some(_) => "microvm,acpi=off,rtc=off,pcie=off,memory-backend=mem",
        None => "microvm,acpi=off,rtc=off,pcie=off",
    };
    let mut argv: Vec<String> = [
        qemu,
        "-M",
        machine,
        "-enable-kvm",
        "-cpu",
        "host,-tsc-deadline",
        "-smp",
        "1",
        "-m",
        &format!("{L2_MEMORY_MIB}M"),
        "-nodefaults",
        "-no-user-config",
        "-nographic",
        "-no-reboot",
        "-serial",
        "stdio",
        "-kernel",
        GUEST_KERNEL,
        "-append",
        &with_reboot(cmdline, "t"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for (id, read_only) in DISKS {
        let ro = if read_only { ",readonly=on" } else { "" };
        argv.push("-drive".into());
        argv.push(format!(
            "id={id},file={},format=raw,if=none,cache=writeback{ro}",
            disk_path(id)
        ));
        argv.push("-device".into());
        argv.push(format!("virtio-blk-device,drive={id},serial={id}"));
    }
    for arg in [
        "-device",
        &format!("vhost-vsock-device,guest-cid={GUEST_CID}"),
        "-object",
        "rng-random,id=rng0,filename=/dev/urandom",
        "-device",
        "virtio-rng-device,rng=rng0",
    ] {
        argv.push(arg.to_string());
    }
    if let Some(share) = share {
        argv.extend([
            "-object".into(),
            format!("memory-backend-memfd,id=mem,size={L2_MEMORY_MIB}M,share=on"),
            "-chardev".into(),
            format!("socket,id=fs0,path={}", share.socket.display()),
            "-device".into(),
            format!("vhost-user-fs-device,chardev=fs0,tag={}", share.tag),
        ]);
    }
    argv
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_with_reboot_replaces_the_reset_method() {
        assert_eq!(
            with_reboot("console=ttyS0 reboot=k quiet", "t"),
            "console=ttyS0 quiet reboot=t"
        );
        assert_eq!(with_reboot("quiet", "t"), "quiet reboot=t");
    }

    #[test]
    fn test_qemu_boots_the_same_guest_as_the_vmm() {
        let cmdline = guest_cmdline("console=ttyS0 root=/dev/vda ro", None);
        let config = vm_config(cmdline.clone(), Console::Stdout, None);
        let argv = qemu_argv("/usr/bin/qemu-system-x86_64", &cmdline, None);
        let at = |flag: &str| argv.iter().position(|a| a == flag).unwrap();
        assert_eq!(
            argv[at("-kernel") + 1],
            config.kernel.path.display().to_string()
        );
        assert_eq!(
            argv[at("-append") + 1],
            with_reboot(config.kernel.cmdline.as_deref().unwrap(), "t")
        );
        assert_eq!(
            argv[at("-m") + 1],
            format!("{}M", config.memory_mib.unwrap())
        );
        assert_eq!(argv[at("-smp") + 1], config.vcpus.unwrap().to_string());
        let drives: Vec<&String> = argv.iter().filter(|a| a.starts_with("id=")).collect();
        assert_eq!(drives.len(), config.disks.len());
        for (drive, disk) in drives.iter().zip(&config.disks) {
            assert!(drive.starts_with(&format!("id={},file={},", disk.id, disk.path.display())));
            assert_eq!(drive.ends_with(",readonly=on"), disk.read_only);
        }
        assert!(argv.contains(&format!(
            "vhost-vsock-device,guest-cid={}",
            config.vsock.unwrap().guest_cid
        )));
        assert!(config.serial.unwrap().stdio);
        assert!(config.filesystems.is_empty());
        assert!(!argv.iter().any(|a| a.contains("memory-backend")));
    }

    #[test]
    fn test_qemu_shares_the_folder_of_the_vmm_config() {
        let share = || Share {
            tag: "share0".into(),
            socket: "/run/virtiofsd.sock".into(),
        };
        let config = vm_config("quiet".into(), Console::Stdout, Some(share()));
        let argv = qemu_argv("qemu", "quiet", Some(&share()));
        let fs = &config.filesystems[0];
        assert!(argv.contains(&format!("socket,id=fs0,path={}", fs.socket_path.display())));
        assert!(argv.contains(&format!("vhost-user-fs-device,chardev=fs0,tag={}", fs.tag)));
        // vhost-user needs guest memory the backend can map: all of it, shared.
        assert!(argv.contains(&format!(
            "memory-backend-memfd,id=mem,size={}M,share=on",
            config.memory_mib.unwrap()
        )));
        assert!(argv.iter().any(|a| a.ends_with(",memory-backend=mem")));
    }
}
