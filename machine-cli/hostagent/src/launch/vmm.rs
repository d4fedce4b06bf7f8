//! Booting a machine under rmachine-vmm (Linux with hardware KVM), with passt for its
//! network.

use anyhow::Context;
use rmachine_machine::driver::{Driver, LocalDriver};
use rmachine_machine::guest_link::Carrier;
use rmachine_machine::image_store::Manifest;
use rmachine_machine::paths::Paths;
use rmachine_machine::qemu::QemuShare;
use rmachine_machine::store::Machine;
use rmachine_machine::vmm_config::{self, VmmConfig};

use super::{Daemon, Proc, RunningVm, QEMU_HOST_ADDR};
use crate::SharedState;

/// The guest's address and prefix length under passt: QEMU user networking's, so both
/// backends give the guest the same network.
const PASST_GUEST_ADDR: &str = "10.0.2.15";
const PASST_GUEST_PREFIX_LEN: &str = "24";

/// Boots the machine under rmachine-vmm: the guest link is the VMM's hybrid vsock socket,
/// so the config disk carries no token and the agent listens on vsock only.
pub(crate) async fn launch_vmm(
    machine: &Machine,
    state: &SharedState,
) -> anyhow::Result<RunningVm> {
    let paths = Paths::from_env()?;
    let vmm = rmachine_machine::driver::vmm_binary()
        .context("rmachine-vmm is not installed beside rmachine (or set RMACHINE_VMM)")?;
    let (manifest, image_dir) = rmachine_machine::image_store::resolve(
        &paths,
        machine.spec.image.as_deref(),
        machine.spec.arch,
    )
    .context("the guest image is missing or damaged")?;
    LocalDriver::new(machine.spec.driver).create(machine)?;
    let (mut daemons, shares, guest_mounts) = super::virtiofsd::start(machine, &paths).await?;
    let passt = start_passt(machine, &paths).await?;
    let net_socket = passt.is_some().then(|| machine.files.passt_socket());
    let jail = jail_for(machine);
    daemons.extend(passt.map(|child| Daemon {
        process: Proc::child(child),
        serves: "network".into(),
    }));
    let networks = crate::networks::attach(machine, &paths)?;
    crate::networks::ensure_switches(&networks, &paths).await?;
    // The hybrid vsock carrier needs no token.
    let config_disk = super::write_config_disk(
        machine,
        "",
        net_socket.is_some().then_some(QEMU_HOST_ADDR),
        guest_mounts,
        &networks,
    )?;
    let console_log = machine.files.console_log();
    std::fs::write(&console_log, b"")
        .with_context(|| format!("cannot reset {}", console_log.display()))?;
    let uds = machine.files.vsock_socket();
    let api = machine.files.vmm_socket();
    for stale in [&uds, &api] {
        let _ = std::fs::remove_file(stale);
    }
    let vsock_dir = machine.files.vsock_dir();
    std::fs::create_dir_all(&vsock_dir)
        .with_context(|| format!("cannot create {}", vsock_dir.display()))?;
    if let Some(jail) = &jail {
        let sockets: Vec<&std::path::Path> = (shares.iter().map(|s| s.socket.as_path()))
            .chain(net_socket.as_deref())
            .collect();
        jail.give(machine, &sockets)?;
    }
    let mut vm_config = vmm_config(
        machine,
        &manifest,
        &image_dir,
        &config_disk,
        &shares,
        net_socket.as_deref(),
        &networks.attachments,
    );
    vm_config.jail = jail.map(|j| j.ids);
    let config_path = machine.files.dir().join("vmm.json");
    std::fs::write(&config_path, vm_config.to_json())
        .with_context(|| format!("cannot write {}", config_path.display()))?;
    let log_path = machine.files.vmm_log();
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("cannot create {}", log_path.display()))?;
    let mut cmd = tokio::process::Command::new(&vmm);
    cmd.arg("--config")
        .arg(&config_path)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true);
    tracing::info!(vmm = %vmm.display(), config = %config_path.display(), "starting rmachine-vmm");
    let child = cmd
        .spawn()
        .with_context(|| format!("cannot run {}", vmm.display()))?;
    let carrier = Carrier::HybridVsock { uds };
    let vm = RunningVm {
        vm: Proc::child(child),
        carrier,
        daemons,
        devices: None,
    };
    state.update(|s| {
        vm.record(s);
        s.image = Some(manifest.version.clone());
    });
    Ok(vm)
}

/// How long passt may take to get ready.
const PASST_READY: std::time::Duration = std::time::Duration::from_secs(10);

/// Starts passt, the machine's network under rmachine-vmm: user-mode networking with QEMU
/// user networking's addresses (the guest gets 10.0.2.15/24 and router 10.0.2.2 from
/// passt's DHCP server; 10.0.2.2 also leads to the host's loopback, as host.docker.internal).
/// passt forwards no host ports (published ports go over vsock), runs in the foreground
/// for this one VM and exits when the VM disconnects. Started as root, passt switches to
/// user nobody by itself once its socket, pid file and log are open. `None`, after a
/// warning, when passt is not installed: the machine then boots without network.
async fn start_passt(
    machine: &Machine,
    paths: &Paths,
) -> anyhow::Result<Option<tokio::process::Child>> {
    let Some(tool) = rmachine_machine::host_tools::find_passt(paths) else {
        tracing::warn!("passt is not installed: the machine boots without network (run `rmachine setup` to install it)");
        return Ok(None);
    };
    let (socket, pid_file, log_path) = (
        machine.files.passt_socket(),
        machine.files.passt_pid(),
        machine.files.passt_log(),
    );
    let _ = std::fs::remove_file(&pid_file);
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("cannot create {}", log_path.display()))?;
    let mut cmd = tokio::process::Command::from(tool.command());
    cmd.args(["--foreground", "--one-off", "--quiet", "--socket"])
        .arg(&socket)
        .arg("--pid")
        .arg(&pid_file)
        .args([
            "--address",
            PASST_GUEST_ADDR,
            "--netmask",
            PASST_GUEST_PREFIX_LEN,
            "--gateway",
            QEMU_HOST_ADDR,
        ])
        .args(["--map-host-loopback", QEMU_HOST_ADDR])
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot run passt {}", tool.binary.display()))?;
    // The pid file is written once passt is initialised, its socket listening.
    let started = std::time::Instant::now();
    while std::fs::metadata(&pid_file).map_or(true, |m| m.len() == 0) {
        if let Some(status) = child.try_wait()? {
            anyhow::bail!("passt exited ({status}); see {}", log_path.display());
        }
        if started.elapsed() > PASST_READY {
            anyhow::bail!(
                "passt did not get ready within {PASST_READY:?}; see {}",
                log_path.display()
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    tracing::info!(socket = %socket.display(), pid = child.id(), "passt started");
    Ok(Some(child))
}

/// rmachine-vmm's boot document for `machine`: root, data and config disks, the hybrid vsock
/// socket, rng, the balloon with free page reporting, one virtio-fs device per shared folder
/// (its virtiofsd's socket), the network device when passt listens at `net_socket` (none
/// without it), the API.
fn vmm_config(
    machine: &Machine,
    manifest: &Manifest,
    image_dir: &std::path::Path,
    config_disk: &std::path::Path,
    shares: &[QemuShare],
    net_socket: Option<&std::path::Path>,
    attachments: &[rmachine_machine::network::Attachment],
) -> VmmConfig {
    let disk = |id: &str, path: std::path::PathBuf, read_only| vmm_config::Disk {
        id: id.into(),
        path,
        read_only,
    };
    let hidden = hidden_cpu_features();
    VmmConfig {
        vcpus: machine.spec.cpus,
        memory_mib: machine.spec.memory_mib,
        kernel: vmm_config::Kernel {
            path: image_dir.join(&manifest.kernel.file),
            cmdline: format!("{} reboot=k", manifest.kernel_cmdline),
        },
        cpu: (!hidden.is_empty()).then_some(vmm_config::Cpu {
            disable_features: hidden,
        }),
        serial: vmm_config::Serial {
            log_path: machine.files.console_log(),
        },
        disks: vec![
            disk("root", image_dir.join(&manifest.rootfs.file), true),
            disk("data", machine.files.data_disk(), false),
            disk("config", config_disk.to_path_buf(), true),
        ],
        vsock: vmm_config::Vsock {
            guest_cid: vmm_config::GUEST_CID,
            uds_path: machine.files.vsock_socket(),
        },
        rng: vmm_config::Rng {},
        // Memory the guest frees goes back to the host (free page reporting), so an idle
        // machine does not keep the peak of its last build.
        balloon: vmm_config::Balloon {
            free_page_reporting: true,
        },
        filesystems: shares
            .iter()
            .map(|s| vmm_config::Filesystem {
                tag: s.tag.clone(),
                socket_path: s.socket.clone(),
            })
            .collect(),
        net: net_socket.map(|socket| vmm_config::Net {
            backend: vmm_config::NetBackend::Passt,
            socket: socket.to_path_buf(),
            mac: crate::networks::PRIMARY_MAC.into(),
        }),
        // A network's switch speaks passt's framing on its socket.
        extra_nets: attachments
            .iter()
            .map(|a| vmm_config::Net {
                backend: vmm_config::NetBackend::Passt,
                socket: a.socket.clone(),
                mac: a.mac.clone(),
            })
            .collect(),
        api_socket: machine.files.vmm_socket(),
        jail: None,
    }
}

/// The environment variable that turns the jail off (`RMACHINE_VMM_JAIL=0`).
const JAIL_SWITCH: &str = "RMACHINE_VMM_JAIL";
/// Started as root, each machine's VMM runs as a user of its own with no name, from this
/// uid (and gid) on: above the ranges distributions give people and systemd gives
/// containers (up to 0x6fff0000), below 2^31.
const JAIL_ID_BASE: u32 = 1_900_000_000;

/// How the VMM of a machine is jailed.
struct JailPlan {
    ids: vmm_config::Jail,
    /// Started as root: the jail user is not the host agent's, and is given the files the
    /// VMM opens in the jail.
    privileged: bool,
}

/// Whether and how `machine`'s VMM runs jailed: by default wherever the host allows it
/// (root, or a user where unprivileged user namespaces are allowed), as the log says;
/// `RMACHINE_VMM_JAIL=0` turns it off.
fn jail_for(machine: &Machine) -> Option<JailPlan> {
    let plan = jail_plan(machine);
    match &plan {
        Ok(p) => tracing::info!(
            uid = p.ids.uid,
            gid = p.ids.gid,
            mode = if p.privileged { "root" } else { "user namespace" },
            "rmachine-vmm runs jailed: its own user and mount, PID, network and IPC namespaces, seeing only its kernel, disks, sockets and /dev/kvm"
        ),
        Err(why) => tracing::warn!("rmachine-vmm runs without its jail: {why}"),
    }
    plan.ok()
}

fn jail_plan(machine: &Machine) -> Result<JailPlan, String> {
    if std::env::var(JAIL_SWITCH).is_ok_and(|v| v == "0") {
        return Err(format!("{JAIL_SWITCH}=0"));
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let ids = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u32>().ok())
    };
    let cap_sys_admin = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << 21) != 0);
    if cap_sys_admin {
        // A switch's socket is shared by the machines of a network: a jail user of this
        // machine's own could not connect to it.
        let networks = &machine.spec.networks;
        if !networks.is_empty() {
            return Err(format!(
                "started as root, a jailed VMM cannot reach the switches of networks {} (their sockets are root's)",
                networks.join(", ")
            ));
        }
        let id = JAIL_ID_BASE + (fnv1a(machine.name.as_bytes()) & 0xffff);
        return Ok(JailPlan {
            ids: vmm_config::Jail { uid: id, gid: id },
            privileged: true,
        });
    }
    let (Some(uid), Some(gid)) = (ids("Uid:"), ids("Gid:")) else {
        return Err("cannot read this process's user from /proc/self/status".into());
    };
    if let Some(why) = user_namespaces_refused() {
        return Err(format!(
            "not started as root, and unprivileged user namespaces are refused here ({why})"
        ));
    }
    Ok(JailPlan {
        ids: vmm_config::Jail { uid, gid },
        privileged: false,
    })
}

/// Why this host refuses unprivileged user namespaces, if it says so in /proc/sys.
fn user_namespaces_refused() -> Option<String> {
    let read = |path: &str| {
        std::fs::read_to_string(path)
            .ok()
            .map(|v| v.trim().to_string())
    };
    if read("/proc/sys/user/max_user_namespaces").as_deref() == Some("0") {
        return Some("user.max_user_namespaces is 0".into());
    }
    if read("/proc/sys/kernel/unprivileged_userns_clone").as_deref() == Some("0") {
        return Some("kernel.unprivileged_userns_clone is 0".into());
    }
    if read("/proc/sys/kernel/apparmor_restrict_unprivileged_userns").as_deref() == Some("1") {
        return Some(
            "AppArmor restricts them: kernel.apparmor_restrict_unprivileged_userns is 1".into(),
        );
    }
    None
}

impl JailPlan {
    /// Started as root: gives the jail user what the VMM opens by its own rights in the
    /// jail: the data disk, the backends' `sockets`, the vsock socket's folder.
    fn give(&self, machine: &Machine, sockets: &[&std::path::Path]) -> anyhow::Result<()> {
        if !self.privileged {
            return Ok(());
        }
        let (uid, gid) = (Some(self.ids.uid), Some(self.ids.gid));
        let data_disk = machine.files.data_disk();
        let vsock_dir = machine.files.vsock_dir();
        for path in [data_disk.as_path(), vsock_dir.as_path()]
            .into_iter()
            .chain(sockets.iter().copied())
        {
            std::os::unix::fs::chown(path, uid, gid).with_context(|| {
                format!(
                    "cannot give {} to the jailed VMM's user {} (set {JAIL_SWITCH}=0 to run it unjailed)",
                    path.display(),
                    self.ids.uid
                )
            })?;
        }
        Ok(())
    }
}

/// FNV-1a, 32 bits: a machine's name to its jail user (stable across starts and builds).
fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5, |h, b| {
        (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}

/// CPU features to hide from the guest, from `RMACHINE_VMM_DISABLE_CPU_FEATURES` (comma
/// separated `/proc/cpuinfo` names): for hosts where a feature misbehaves, such as the
/// TSC-deadline timer under nested virtualization on an emulated CPU. rmachine-vmm refuses
/// an unknown name, naming it.
fn hidden_cpu_features() -> Vec<String> {
    std::env::var("RMACHINE_VMM_DISABLE_CPU_FEATURES")
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|f| !f.is_empty())
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rmachine_machine::config::Settings;
    use rmachine_machine::store::Store;

    fn read_frame(s: &mut std::os::unix::net::UnixStream) -> Vec<u8> {
        use std::io::Read;
        let mut len = [0u8; 4];
        s.read_exact(&mut len).unwrap();
        let mut frame = vec![0u8; u32::from_be_bytes(len) as usize];
        s.read_exact(&mut frame).unwrap();
        frame
    }

    /// Started as root (this test's CI), a machine's jail user is its own, stable, never
    /// root and in the reserved range; one on a network runs unjailed, saying why. As a
    /// user, the jail is that user's own.
    #[test]
    fn test_jail_plan_by_default_and_its_exceptions() {
        assert_eq!(fnv1a(b"default"), fnv1a(b"default"));
        assert_ne!(fnv1a(b"default"), fnv1a(b"other"));
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::with_roots(dir.path().join("home"), dir.path().join("cache"));
        let store = Store::new(paths);
        let machine = store.create("jailed", &Settings::default()).unwrap();
        let plan = jail_plan(&machine).expect("jailed by default");
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let uid: u32 = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|v| v.split_whitespace().next())
            .unwrap()
            .parse()
            .unwrap();
        if plan.privileged {
            assert!(plan.ids.uid >= JAIL_ID_BASE && plan.ids.uid <= JAIL_ID_BASE + 0xffff);
            assert_eq!(plan.ids.uid, plan.ids.gid);
            let settings = Settings {
                networks: Some(vec!["swarm".into()]),
                ..Settings::default()
            };
            let on_network = store.create("onnet", &settings).unwrap();
            let why = jail_plan(&on_network).err().expect("unjailed on a network");
            assert!(why.contains("networks swarm"), "{why}");
        } else {
            assert_eq!(plan.ids.uid, uid);
        }
    }

    /// The next frame of EtherType `ether_type` (passt may send others on its own).
    fn next_frame(s: &mut std::os::unix::net::UnixStream, ether_type: [u8; 2]) -> Vec<u8> {
        (0..16)
            .map(|_| read_frame(s))
            .find(|f| f.len() >= 14 && f[12..14] == ether_type)
            .expect("no such frame from passt")
    }

    /// The passt the host agent starts gives a guest the QEMU user networking addresses:
    /// its ARP responder answers for 10.0.2.2 and its DHCP server offers 10.0.2.15/24 with
    /// router 10.0.2.2. The frames go over passt's socket as rmachine-vmm's would.
    #[tokio::test]
    async fn test_passt_gives_the_guest_qemu_user_networking_addresses() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let cache = Paths::from_env().unwrap().cache().to_path_buf();
        let paths = Paths::with_roots(dir.path().join("home"), cache);
        if rmachine_machine::host_tools::find_passt(&paths).is_none() {
            let why = "no passt: run `rmachine setup` or set RMACHINE_PASST";
            assert!(
                std::env::var("REQUIRE_KVM").as_deref() != Ok("1"),
                "REQUIRE_KVM=1 but {why}"
            );
            eprintln!("skipped: {why}");
            return;
        }
        let machine = Store::new(paths.clone())
            .create("passt", &Settings::default())
            .unwrap();
        let mut passt = start_passt(&machine, &paths)
            .await
            .unwrap()
            .expect("passt starts");
        let pid: u32 = std::fs::read_to_string(machine.files.passt_pid())
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert_eq!(Some(pid), passt.id());
        let mut s = std::os::unix::net::UnixStream::connect(machine.files.passt_socket()).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        let guest_mac = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
        let send = |s: &mut std::os::unix::net::UnixStream, frame: &[u8]| {
            s.write_all(&(frame.len() as u32).to_be_bytes()).unwrap();
            s.write_all(frame).unwrap();
        };

        // ARP: who has 10.0.2.2, tell 0.0.0.0.
        let mut arp = vec![0xff; 6];
        arp.extend(guest_mac);
        arp.extend([0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
        arp.extend(guest_mac);
        arp.extend([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 10, 0, 2, 2]);
        arp.resize(60, 0);
        send(&mut s, &arp);
        let reply = next_frame(&mut s, [0x08, 0x06]);
        assert_eq!(&reply[..6], &guest_mac, "to the guest");
        assert_eq!(&reply[20..22], &[0, 2], "an ARP reply");
        assert_eq!(&reply[28..32], &[10, 0, 2, 2], "for the host address");

        // DHCP DISCOVER, broadcast, from 0.0.0.0:68 to 255.255.255.255:67.
        let mut bootp = vec![0u8; 240];
        bootp[..3].copy_from_slice(&[1, 1, 6]);
        bootp[4..8].copy_from_slice(&0x1234_5678u32.to_be_bytes());
        bootp[10] = 0x80;
        bootp[28..34].copy_from_slice(&guest_mac);
        bootp[236..240].copy_from_slice(&[99, 130, 83, 99]);
        bootp.extend([53, 1, 1, 255]);
        let udp_len = (8 + bootp.len()) as u16;
        let mut ip = vec![0x45, 0];
        ip.extend((20 + udp_len).to_be_bytes());
        ip.extend([0, 0, 0, 0, 64, 17, 0, 0, 0, 0, 0, 0, 255, 255, 255, 255]);
        let sum = ip
            .chunks(2)
            .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
            .sum::<u32>();
        let sum = !((sum & 0xffff) + (sum >> 16)) as u16;
        ip[10..12].copy_from_slice(&sum.to_be_bytes());
        let mut dhcp = vec![0xff; 6];
        dhcp.extend(guest_mac);
        dhcp.extend([0x08, 0x00]);
        dhcp.extend(ip);
        dhcp.extend([0, 68, 0, 67]);
        dhcp.extend(udp_len.to_be_bytes());
        dhcp.extend([0, 0]);
        dhcp.extend(bootp);
        send(&mut s, &dhcp);
        let offer = next_frame(&mut s, [0x08, 0x00]);
        let m = &offer[14 + 20 + 8..];
        assert_eq!(m[0], 2, "a BOOTREPLY");
        assert_eq!(&m[4..8], &0x1234_5678u32.to_be_bytes());
        assert_eq!(&m[16..20], &[10, 0, 2, 15], "the offered address");
        let option = |code: u8| {
            let mut i = 240;
            while i + 1 < m.len() && m[i] != 255 {
                if m[i] == code {
                    return Some(m[i + 2..i + 2 + usize::from(m[i + 1])].to_vec());
                }
                i += 2 + usize::from(m[i + 1]);
            }
            None
        };
        assert_eq!(option(53), Some(vec![2]), "a DHCPOFFER");
        assert_eq!(option(1), Some(vec![255, 255, 255, 0]), "the netmask");
        assert_eq!(option(3), Some(vec![10, 0, 2, 2]), "the router");

        // One-off: passt exits once its client is gone.
        drop(s);
        let status = tokio::time::timeout(std::time::Duration::from_secs(10), passt.wait())
            .await
            .unwrap()
            .unwrap();
        assert!(
            status.success(),
            "passt exited {status}: {}",
            std::fs::read_to_string(machine.files.passt_log()).unwrap()
        );
    }
}
