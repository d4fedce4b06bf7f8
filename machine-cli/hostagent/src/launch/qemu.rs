//! Booting a machine under QEMU (`-M microvm` for amd64 guests, `-M virt` for arm64: the
//! binary and command line follow the machine's architecture), reached over its
//! user-mode network's TCP forwards with the boot's token.

use std::collections::BTreeMap;

use anyhow::Context;
use rmachine_machine::driver::{Backend, BackendChoice, Driver, LocalDriver};
use rmachine_machine::guest_link::Carrier;
use rmachine_machine::paths::Paths;
use rmachine_machine::platform::Platform;
use rmachine_machine::qemu::{self, QemuNic, QemuVm};
use rmachine_machine::saved_state::{self, DiskStamp, Expected, SavedHeader};
use rmachine_machine::store::Machine;
use rmachine_protocol::Service;

use super::{free_loopback_port, new_token, Proc, RunningVm, QEMU_HOST_ADDR};
use crate::SharedState;

/// Boots the machine under QEMU; with `resume`, starts QEMU paused, waiting for that saved
/// state (QMP's `migrate-incoming`) with the saved guest link token, after checking that
/// the state fits the VM this start makes (refused: [`Refusal`], nothing started).
pub(crate) async fn launch_qemu(
    machine: &Machine,
    choice: &BackendChoice,
    state: &SharedState,
    resume: Option<&SavedHeader>,
) -> anyhow::Result<RunningVm> {
    let paths = Paths::from_env()?;
    let (manifest, image_dir) = rmachine_machine::image_store::resolve(
        &paths,
        machine.spec.image.as_deref(),
        machine.spec.arch,
    )
    .context("the guest image is missing or damaged")?;
    // The data disk as it is before anything opens it, for the saved state's check.
    let data_disk = DiskStamp::of(&machine.files.data_disk()).ok();
    LocalDriver::new(machine.spec.driver).create(machine)?;

    let token = match resume {
        // The resumed guest agent still holds the token it read at its boot.
        Some(saved) => saved.token.clone(),
        None => new_token(),
    };
    let (virtiofsd, shares, guest_mounts) = super::virtiofsd::start(machine, &paths).await?;
    let networks = crate::networks::attach(machine, &paths)?;
    crate::networks::ensure_switches(&networks, &paths).await?;
    let config_disk = super::write_config_disk(
        machine,
        &token,
        Some(QEMU_HOST_ADDR),
        guest_mounts,
        &networks,
    )?;

    let mut ports = BTreeMap::new();
    let mut forwards = Vec::new();
    for service in Service::ALL {
        let host = free_loopback_port()?;
        ports.insert(service.port(), host);
        forwards.push((host, service.port()));
    }
    let console_log = machine.files.console_log();
    let vm = QemuVm {
        arch: manifest.arch,
        host: Platform::current(),
        kernel: image_dir.join(&manifest.kernel.file),
        cmdline: manifest.kernel_cmdline.clone(),
        rootfs: image_dir.join(&manifest.rootfs.file),
        data_disk: machine.files.data_disk(),
        config_disk,
        cpus: machine.spec.cpus,
        memory_mib: machine.spec.memory_mib,
        accel: choice.accel,
        console_log: console_log.clone(),
        forwards,
        vsock_cid: None,
        qmp_socket: Some(machine.files.qmp_socket()),
        qmp_events_socket: Some(machine.files.qmp_events_socket()),
        pid_file: None,
        shares,
        primary_mac: networks.primary_mac(),
        nics: networks
            .attachments
            .iter()
            .map(|a| QemuNic {
                mac: a.mac.clone(),
                socket: a.socket.clone(),
            })
            .collect(),
        incoming: resume.is_some(),
    };
    let devices = vm.devices()?;
    if let Some(saved) = resume {
        let settings = serde_json::to_value(&machine.spec).context("settings as JSON")?;
        let now = Expected {
            backend: Backend::Qemu.as_str(),
            image: &manifest.version,
            settings: &settings,
            devices: &devices,
            data_disk: data_disk.context("the data disk is missing")?,
        };
        // The header again, with the state file's size: complete, and still this one.
        match saved_state::load(&machine.files, &now)? {
            Some(checked) if checked == *saved => {}
            _ => anyhow::bail!("the saved state changed while it was being resumed"),
        }
    }
    // Each boot's console starts empty, so the error state shows this boot's lines.
    std::fs::write(&console_log, b"")
        .with_context(|| format!("cannot reset {}", console_log.display()))?;
    let log_path = machine.files.vmm_log();
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("cannot create {}", log_path.display()))?;
    let command = vm.command()?;
    tracing::info!(?command, "starting QEMU");
    let mut cmd = tokio::process::Command::from(command);
    cmd.stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true);
    let child = cmd.spawn().with_context(|| {
        format!(
            "cannot run {} (install the Debian package {})",
            qemu::binary(vm.arch),
            qemu::debian_package(vm.arch)
        )
    })?;
    let carrier = Carrier::Tcp { ports, token };
    let vm = RunningVm {
        vm: Proc::child(child),
        carrier,
        daemons: virtiofsd,
        devices: Some(devices),
    };
    state.update(|s| {
        vm.record(s);
        s.image = Some(manifest.version.clone());
    });
    Ok(vm)
}
