//! Launching the VM process for a machine: the config disk with a fresh token, the data
//! disk, free loopback ports for the TCP carrier, and the backend's command.

mod process;
mod qemu;
// Saving and resuming a VM: QEMU's QMP socket is a unix socket.
#[cfg(unix)]
mod qmp;
#[cfg(unix)]
mod saved;
#[cfg(not(unix))]
#[path = "saved_unsupported.rs"]
mod saved;
// Shared folders: virtiofsd runs on Linux only.
#[cfg(target_os = "linux")]
mod virtiofsd;
#[cfg(not(target_os = "linux"))]
#[path = "virtiofsd_unsupported.rs"]
mod virtiofsd;
// rmachine-vmm is a KVM VMM: Linux only.
#[cfg(target_os = "linux")]
mod vmm;
#[cfg(not(target_os = "linux"))]
#[path = "vmm_unsupported.rs"]
mod vmm;

use std::net::{SocketAddr, TcpListener};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use rmachine_machine::guest_link::Carrier;
use rmachine_machine::state::{Helper, MachineState};
use rmachine_machine::store::Machine;
use rmachine_protocol::config_disk::{GuestConfig, Mount};

pub(crate) use process::Proc;
pub(crate) use qemu::launch_qemu;
pub(crate) use saved::{resume_qemu, save_qemu, Resumed, SaveOutcome};
pub(crate) use vmm::launch_vmm;

/// Address of the host as containers see it under QEMU user networking, and under passt
/// (which maps it to the host's loopback) with rmachine-vmm.
pub(crate) const QEMU_HOST_ADDR: &str = "10.0.2.2";

pub(crate) struct RunningVm {
    pub vm: Proc,
    pub carrier: Carrier,
    /// The VM's helper daemons: one virtiofsd per shared folder and, under rmachine-vmm,
    /// passt. They end when the VM disconnects, and are killed with the VM.
    pub daemons: Vec<Daemon>,
    /// The VM's devices as a saved state records them (QEMU's command line without the
    /// parts of one start); `None` when unknown (a VM taken over, rmachine-vmm). Read by
    /// saves, which need QMP's unix socket.
    #[cfg_attr(not(unix), allow(dead_code))]
    pub devices: Option<Vec<String>>,
}

/// A helper process of the VM and what its death costs the user.
pub(crate) struct Daemon {
    pub process: Proc,
    /// What stops working without it ("shared folder /home/me", "network").
    pub serves: String,
}

/// Waits until one of `daemons` exits; removes it and returns it with how it ended. Never
/// returns while none exits (or there are none).
pub(crate) async fn daemon_exited(daemons: &mut Vec<Daemon>) -> (Daemon, String) {
    loop {
        for i in 0..daemons.len() {
            if let Some(status) = daemons[i].process.try_exited() {
                return (daemons.remove(i), status);
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

/// How long the helpers of a killed VM may take to end by themselves.
const HELPERS_END: std::time::Duration = std::time::Duration::from_secs(10);

impl RunningVm {
    /// Kills the VM, then its helpers once they ended by themselves (they do when their
    /// VM is gone) or after [`HELPERS_END`]. Killed outright, virtiofsd's sandboxed child
    /// outlives it for a moment, holding the pid file the next start's virtiofsd needs
    /// ("Resource temporarily unavailable"): seen when a start followed at once.
    pub(crate) async fn kill(&mut self) {
        self.vm.kill().await;
        let started = std::time::Instant::now();
        while started.elapsed() < HELPERS_END
            && (self.daemons.iter_mut()).any(|d| d.process.try_exited().is_none())
        {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        for daemon in &mut self.daemons {
            if daemon.process.try_exited().is_none() {
                tracing::warn!(serves = %daemon.serves, "a helper still runs {HELPERS_END:?} after its VM was killed: killing it");
                daemon.process.kill().await;
            }
        }
    }

    /// The VM and its helpers as `state.json` records them.
    pub(crate) fn record(&self, state: &mut MachineState) {
        state.vm = self.vm.id();
        state.helpers = (self.daemons.iter())
            .filter_map(|d| {
                Some(Helper {
                    serves: d.serves.clone(),
                    id: d.process.id()?,
                })
            })
            .collect();
        state.carrier = Some(self.carrier.clone());
    }
}

/// The VM a host agent that died left running (`previous`, the state a start begins
/// with), to take over: its process still runs this machine (its command line names the
/// machine's folder), with the helpers that still run.
pub(crate) fn adoptable(machine: &Machine, previous: &MachineState) -> Option<RunningVm> {
    let vm = previous.vm.filter(|vm| vm.is_alive())?;
    let carrier = previous.carrier.clone()?;
    let dir = machine.files.dir().to_string_lossy().into_owned();
    if !vm.cmdline()?.iter().any(|arg| arg.contains(&dir)) {
        return None;
    }
    let daemons = (previous.helpers.iter())
        .filter(|h| h.id.is_alive())
        .map(|h| Daemon {
            process: Proc::Adopted(h.id),
            serves: h.serves.clone(),
        })
        .collect();
    Some(RunningVm {
        vm: Proc::Adopted(vm),
        carrier,
        daemons,
        devices: None,
    })
}

/// Writes the machine's config disk for this boot: its name, the boot's `token` (empty on
/// a carrier that needs none), the host's address as containers reach it, its shared
/// folders, networks and peers, and its engine's settings.
pub(crate) fn write_config_disk(
    machine: &Machine,
    token: &str,
    host_addr: Option<&str>,
    mounts: Vec<Mount>,
    networks: &crate::networks::MachineNetworks,
) -> anyhow::Result<std::path::PathBuf> {
    let config = GuestConfig {
        version: rmachine_protocol::PROTOCOL_VERSION,
        token: token.to_string(),
        hostname: machine.name.clone(),
        data_disk: "/dev/vdb".into(),
        host_time_unix_ns: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as i64)
            .unwrap_or(0),
        host_addr: host_addr.map(str::to_string),
        mounts,
        primary_mac: networks.primary_mac(),
        networks: networks.nics(),
        hosts: networks.hosts.clone(),
        engine: Some(machine.spec.engine.clone()).filter(|e| !e.is_empty()),
    };
    let path = machine.files.config_disk();
    std::fs::write(&path, config.encode())
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

pub(crate) fn free_loopback_port() -> anyhow::Result<SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0").context("cannot find a free loopback port")?;
    Ok(l.local_addr()?)
}

/// A fresh random token for this boot.
pub(crate) fn new_token() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}
