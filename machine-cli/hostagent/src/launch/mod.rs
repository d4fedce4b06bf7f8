//! Launching the VM process for a machine: the config disk with a fresh token, the data
//! disk, free loopback ports for the TCP carrier, and the backend's command.

mod qemu;
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

use anyhow::Context;
use rmachine_machine::guest_link::Carrier;

pub(crate) use qemu::launch_qemu;
pub(crate) use vmm::launch_vmm;

/// Address of the host as containers see it under QEMU user networking, and under passt
/// (which maps it to the host's loopback) with rmachine-vmm.
pub(crate) const QEMU_HOST_ADDR: &str = "10.0.2.2";

pub(crate) struct RunningVm {
    pub child: tokio::process::Child,
    pub carrier: Carrier,
    /// The VM's helper daemons: one virtiofsd per shared folder and, under rmachine-vmm,
    /// passt. They exit when the VM disconnects, and are killed with the VM and with the
    /// host agent.
    pub daemons: Vec<Daemon>,
}

/// A helper process of the VM and what its death costs the user.
pub(crate) struct Daemon {
    pub child: tokio::process::Child,
    /// What stops working without it ("shared folder /home/me", "network").
    pub serves: String,
}

/// Waits until one of `daemons` exits; removes it and returns it with its status. Never
/// returns while none exits (or there are none).
pub(crate) async fn daemon_exited(daemons: &mut Vec<Daemon>) -> (Daemon, std::process::ExitStatus) {
    loop {
        for i in 0..daemons.len() {
            if let Ok(Some(status)) = daemons[i].child.try_wait() {
                return (daemons.remove(i), status);
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

impl RunningVm {
    pub(crate) async fn kill(&mut self) {
        let _ = self.child.kill().await;
        for daemon in &mut self.daemons {
            let _ = daemon.child.kill().await;
        }
    }
}

pub(crate) fn free_loopback_port() -> anyhow::Result<SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0").context("cannot find a free loopback port")?;
    Ok(l.local_addr()?)
}

/// A fresh random token for this boot.
pub(crate) fn new_token() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}
