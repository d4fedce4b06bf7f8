//! Launching the VM process for a machine: the config disk with a fresh token, the data
//! disk, free loopback ports for the TCP carrier, and the backend's command.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use rmachine_machine::driver::{BackendChoice, Driver, LocalDriver};
use rmachine_machine::guest_link::Carrier;
use rmachine_machine::paths::Paths;
use rmachine_machine::qemu::{QemuShare, QemuVm, QEMU};
use rmachine_machine::store::Machine;
use rmachine_protocol::config_disk::{GuestConfig, Mount};
use rmachine_protocol::Service;

use super::SharedState;

/// Address of the host as containers see it under QEMU user networking.
const QEMU_HOST_ADDR: &str = "10.0.2.2";

pub(crate) struct RunningVm {
    pub child: tokio::process::Child,
    pub carrier: Carrier,
    /// One virtiofsd per shared folder; they exit when the VM disconnects, and are killed
    /// with the host agent.
    pub virtiofsd: Vec<tokio::process::Child>,
}

impl RunningVm {
    pub(crate) async fn kill(&mut self) {
        let _ = self.child.kill().await;
        for daemon in &mut self.virtiofsd {
            let _ = daemon.kill().await;
        }
    }
}

fn free_loopback_port() -> anyhow::Result<SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0").context("cannot find a free loopback port")?;
    Ok(l.local_addr()?)
}

/// A fresh random token for this boot.
fn new_token() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

pub(crate) async fn launch_qemu(machine: &Machine, choice: &BackendChoice, state: &SharedState) -> anyhow::Result<RunningVm> {
    let paths = Paths::from_env()?;
    let (manifest, image_dir) = rmachine_image::resolve(&paths, machine.spec.image.as_deref())
        .context("the guest image is missing or damaged")?;
    LocalDriver::new(machine.spec.driver).create(machine)?;

    let token = new_token();
    let config = GuestConfig {
        version: rmachine_protocol::PROTOCOL_VERSION,
        token: token.clone(),
        hostname: machine.name.clone(),
        data_disk: "/dev/vdb".into(),
        host_time_unix_ns: SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0),
        host_addr: Some(QEMU_HOST_ADDR.into()),
        mounts: vec![],
    };
    let (virtiofsd, shares, guest_mounts) = start_virtiofsd(machine, &paths).await?;
    let config = GuestConfig { mounts: guest_mounts, ..config };
    let config_disk = machine.files.config_disk();
    std::fs::write(&config_disk, config.encode()).with_context(|| format!("cannot write {}", config_disk.display()))?;

    let mut ports = BTreeMap::new();
    let mut forwards = Vec::new();
    for service in Service::ALL {
        let host = free_loopback_port()?;
        ports.insert(service.port(), host);
        forwards.push((host, service.port()));
    }
    let console_log = machine.files.console_log();
    // Each boot's console starts empty, so the error state shows this boot's lines.
    std::fs::write(&console_log, b"").with_context(|| format!("cannot reset {}", console_log.display()))?;
    let vm = QemuVm {
        kernel: image_dir.join(&manifest.kernel.file),
        cmdline: manifest.kernel_cmdline.clone(),
        rootfs: image_dir.join(&manifest.rootfs.file),
        data_disk: machine.files.data_disk(),
        config_disk,
        cpus: machine.spec.cpus,
        memory_mib: machine.spec.memory_mib,
        accel: choice.accel,
        console_log,
        forwards,
        vsock_cid: None,
        qmp_socket: Some(machine.files.qmp_socket()),
        pid_file: None,
        shares,
    };
    let log_path = machine.files.vmm_log();
    let log = std::fs::File::create(&log_path).with_context(|| format!("cannot create {}", log_path.display()))?;
    let mut cmd = tokio::process::Command::from(vm.command());
    cmd.stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true);
    tracing::info!(command = ?vm.command(), "starting QEMU");
    let child = cmd.spawn().with_context(|| format!("cannot run {QEMU} (install the Debian package qemu-system-x86)"))?;
    let carrier = Carrier::Tcp { ports, token };
    state.update(|s| {
        s.vm_pid = child.id();
        s.image = Some(manifest.version.clone());
        s.carrier = Some(carrier.clone());
    });
    Ok(RunningVm { child, carrier, virtiofsd })
}

/// How long virtiofsd may take to create its socket.
const VIRTIOFSD_READY: std::time::Duration = std::time::Duration::from_secs(10);

/// Starts one virtiofsd per shared folder, confined to that folder (its namespace
/// sandbox), with `--cache never`: every guest access goes to the host, so an edit on the
/// host is seen in the guest at once (virtio-fs has no channel for the host to
/// invalidate the guest's cache, so any caching policy would show stale files for up to
/// its timeout).
async fn start_virtiofsd(
    machine: &Machine,
    paths: &Paths,
) -> anyhow::Result<(Vec<tokio::process::Child>, Vec<QemuShare>, Vec<Mount>)> {
    let (mut children, mut shares, mut mounts) = (Vec::new(), Vec::new(), Vec::new());
    if machine.spec.mounts.is_empty() {
        return Ok((children, shares, mounts));
    }
    let tool = rmachine_image::host_tools::find_virtiofsd(paths)
        .context("virtiofsd is not installed (shared folders need it): run `rmachine setup`")?;
    let log_path = machine.files.virtiofsd_log();
    let log = std::fs::File::create(&log_path).with_context(|| format!("cannot create {}", log_path.display()))?;
    for (index, share) in machine.spec.mounts.iter().enumerate() {
        if !share.path.is_dir() {
            anyhow::bail!(
                "shared folder {} does not exist or is not a folder (remove it from {} or create it)",
                share.path.display(),
                machine.files.config().display()
            );
        }
        let socket = machine.files.virtiofs_socket(index);
        let _ = std::fs::remove_file(&socket);
        let mut cmd = tokio::process::Command::from(tool.command());
        cmd.arg("--socket-path")
            .arg(&socket)
            .arg("--shared-dir")
            .arg(&share.path)
            .args(["--cache", "never", "--sandbox", "namespace", "--announce-submounts", "--log-level", "warn"]);
        if share.read_only {
            cmd.arg("--readonly");
        }
        cmd.stdin(std::process::Stdio::null()).stdout(log.try_clone()?).stderr(log.try_clone()?).kill_on_drop(true);
        let mut child = cmd.spawn().with_context(|| format!("cannot run virtiofsd {}", tool.binary.display()))?;
        let started = std::time::Instant::now();
        while !socket.exists() {
            if let Some(status) = child.try_wait()? {
                anyhow::bail!("virtiofsd for {} exited ({status}); see {}", share.path.display(), log_path.display());
            }
            if started.elapsed() > VIRTIOFSD_READY {
                anyhow::bail!("virtiofsd for {} did not create its socket within {VIRTIOFSD_READY:?}", share.path.display());
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        tracing::info!(path = %share.path.display(), read_only = share.read_only, "virtiofsd started");
        let tag = format!("share{index}");
        shares.push(QemuShare { tag: tag.clone(), socket });
        mounts.push(Mount { tag, guest_path: share.path.display().to_string(), read_only: share.read_only });
        children.push(child);
    }
    Ok((children, shares, mounts))
}

/// The guest CID rmachine-vmm gives the guest (any value above 2 works: the hybrid
/// socket is per VM).
const VMM_GUEST_CID: u32 = 3;

/// Boots the machine under rmachine-vmm: the guest link is the VMM's hybrid vsock socket,
/// so the config disk carries no token and the agent listens on vsock only.
pub(crate) async fn launch_vmm(machine: &Machine, state: &SharedState) -> anyhow::Result<RunningVm> {
    let paths = Paths::from_env()?;
    let vmm = rmachine_machine::driver::vmm_binary()
        .context("rmachine-vmm is not installed beside rmachine (or set RMACHINE_VMM)")?;
    let (manifest, image_dir) = rmachine_image::resolve(&paths, machine.spec.image.as_deref())
        .context("the guest image is missing or damaged")?;
    LocalDriver::new(machine.spec.driver).create(machine)?;
    let (virtiofsd, shares, guest_mounts) = start_virtiofsd(machine, &paths).await?;
    let config = GuestConfig {
        version: rmachine_protocol::PROTOCOL_VERSION,
        token: String::new(),
        hostname: machine.name.clone(),
        data_disk: "/dev/vdb".into(),
        host_time_unix_ns: SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0),
        host_addr: None,
        mounts: guest_mounts,
    };
    let config_disk = machine.files.config_disk();
    std::fs::write(&config_disk, config.encode()).with_context(|| format!("cannot write {}", config_disk.display()))?;
    let console_log = machine.files.console_log();
    std::fs::write(&console_log, b"").with_context(|| format!("cannot reset {}", console_log.display()))?;
    let uds = machine.files.vsock_socket();
    let api = machine.files.vmm_socket();
    for stale in [&uds, &api] {
        let _ = std::fs::remove_file(stale);
    }
    let vm_config = vmm_config(
        machine,
        &VmmImage {
            kernel: image_dir.join(&manifest.kernel.file),
            cmdline: &manifest.kernel_cmdline,
            rootfs: image_dir.join(&manifest.rootfs.file),
        },
        &config_disk,
        &shares,
    );
    let config_path = machine.files.dir().join("vmm.json");
    std::fs::write(&config_path, serde_json::to_vec_pretty(&vm_config)?)
        .with_context(|| format!("cannot write {}", config_path.display()))?;
    let log_path = machine.files.vmm_log();
    let log = std::fs::File::create(&log_path).with_context(|| format!("cannot create {}", log_path.display()))?;
    let mut cmd = tokio::process::Command::new(&vmm);
    cmd.arg("--config").arg(&config_path).stdin(std::process::Stdio::null()).stdout(log.try_clone()?).stderr(log).kill_on_drop(true);
    tracing::info!(vmm = %vmm.display(), config = %config_path.display(), "starting rmachine-vmm");
    let child = cmd.spawn().with_context(|| format!("cannot run {}", vmm.display()))?;
    let carrier = Carrier::HybridVsock { uds };
    state.update(|s| {
        s.vm_pid = child.id();
        s.image = Some(manifest.version.clone());
        s.carrier = Some(carrier.clone());
    });
    Ok(RunningVm { child, carrier, virtiofsd })
}

/// The guest image's parts rmachine-vmm boots.
struct VmmImage<'a> {
    kernel: std::path::PathBuf,
    cmdline: &'a str,
    rootfs: std::path::PathBuf,
}

/// rmachine-vmm's boot document for `machine`: root, data and config disks, the hybrid vsock
/// socket, rng, one virtio-fs device per shared folder (its virtiofsd's socket), the API.
fn vmm_config(machine: &Machine, image: &VmmImage, config_disk: &std::path::Path, shares: &[QemuShare]) -> serde_json::Value {
    let filesystems: Vec<serde_json::Value> =
        shares.iter().map(|s| serde_json::json!({ "tag": s.tag, "socket_path": s.socket })).collect();
    serde_json::json!({
        "vcpus": machine.spec.cpus,
        "memory_mib": machine.spec.memory_mib,
        "kernel": {
            "path": image.kernel,
            "cmdline": format!("{} reboot=k", image.cmdline),
        },
        "serial": { "log_path": machine.files.console_log() },
        "disks": [
            { "id": "root", "path": image.rootfs, "read_only": true },
            { "id": "data", "path": machine.files.data_disk() },
            { "id": "config", "path": config_disk, "read_only": true },
        ],
        "vsock": { "guest_cid": VMM_GUEST_CID, "uds_path": machine.files.vsock_socket() },
        "rng": {},
        "filesystems": filesystems,
        "api_socket": machine.files.vmm_socket(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rmachine_machine::config::{MountSpec, Settings};
    use rmachine_machine::store::Store;

    /// The document the host agent writes is one rmachine-vmm accepts, with a virtio-fs
    /// device per share (the VMM's own validation: unknown fields, files, sockets).
    #[test]
    fn test_vmm_config_is_accepted_by_the_vmm_with_one_fs_device_per_share() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(Paths::with_roots(dir.path().join("home"), dir.path().join("cache")));
        let settings = Settings {
            mounts: Some(vec![
                MountSpec { path: dir.path().to_path_buf(), read_only: false },
                MountSpec { path: "/tmp".into(), read_only: true },
            ]),
            ..Settings::default()
        };
        let machine = store.create("vmmcfg", &settings).unwrap();
        let (kernel, rootfs) = (dir.path().join("bzImage"), dir.path().join("root.erofs"));
        for file in [&kernel, &rootfs, &machine.files.data_disk(), &machine.files.config_disk()] {
            std::fs::write(file, b"x").unwrap();
        }
        let mut listeners = Vec::new();
        let shares: Vec<QemuShare> = (0..2)
            .map(|i| {
                let socket = machine.files.virtiofs_socket(i);
                listeners.push(std::os::unix::net::UnixListener::bind(&socket).unwrap());
                QemuShare { tag: format!("share{i}"), socket }
            })
            .collect();
        let image = VmmImage { kernel, cmdline: "console=ttyS0", rootfs };
        let doc = vmm_config(&machine, &image, &machine.files.config_disk(), &shares);
        let parsed = vmm::config::VmConfig::from_json(&doc.to_string()).unwrap();
        let resolved = parsed.validate_with_host_memory(Some(1 << 40)).unwrap();
        let tags: Vec<&str> = parsed.filesystems.iter().map(|f| f.tag.as_str()).collect();
        assert_eq!(tags, ["share0", "share1"]);
        assert_eq!(parsed.filesystems[1].socket_path, machine.files.virtiofs_socket(1));
        assert_eq!(resolved.slots.len(), 7, "3 disks, vsock, rng, 2 fs: {:?}", resolved.slots);
        assert_eq!(resolved.cmdline, "console=ttyS0 reboot=k");
    }
}
