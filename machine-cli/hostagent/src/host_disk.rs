//! The host disk under the machine's data disk filling up (QEMU driver).
//!
//! QEMU is told to pause the VM when a write to the data disk fails for lack of host
//! space (`werror=enospc`, its default, stated on the command line): the guest sees no
//! error, its request waits, and QEMU sends the `BLOCK_IO_ERROR` event. The host agent
//! follows QEMU's events on `qmp-events.sock` (a QMP socket of its own: `qmp.sock` stays
//! free for a save's commands); on that one it marks the machine `paused` with
//! the reason (which file, which filesystem, how much must be free) and checks the free
//! space every [`CHECK_INTERVAL`]; once [`RESUME_FREE_BYTES`] are free it continues the
//! VM, which retries the waiting writes: nothing the guest wrote is lost and its
//! filesystem never saw an error. (A pause is what Docker Desktop's and Lima's QEMU do
//! too; resuming by itself spares the user a command once they have freed space.)
//!
//! `state.json` lives on the same filesystem more often than not: the host agent holds
//! [`RESERVE_BYTES`] there while the VM runs and lets go of them when it pauses, so the
//! paused state can still be written.

use std::path::PathBuf;
use std::time::Duration;

use rmachine_machine::state::State;
use rmachine_machine::store::Machine;
use tokio::sync::mpsc;

use crate::qmp::{Qmp, QmpEvent};
use crate::SharedState;

/// Free space on the host filesystem at which a VM paused for lack of it continues.
pub(crate) const RESUME_FREE_BYTES: u64 = 64 << 20;
/// How often a paused VM's host filesystem is looked at.
pub(crate) const CHECK_INTERVAL: Duration = Duration::from_secs(2);
/// Space held beside `state.json` while the VM runs.
const RESERVE_BYTES: usize = 1 << 20;

/// QEMU's events and the VM's pause for lack of host space.
pub(crate) struct Monitor {
    name: String,
    data_disk: PathBuf,
    reserve: PathBuf,
    qmp: Option<(Qmp, mpsc::UnboundedReceiver<QmpEvent>)>,
    /// Paused for lack of host space.
    paused: bool,
    /// The reason while paused, for the docker.sock proxy (which answers with it).
    paused_tx: tokio::sync::watch::Sender<Option<String>>,
    /// I/O errors other than a full disk, already reported.
    reported: Vec<String>,
}

impl Monitor {
    /// Follows the events of the QEMU serving `machine` (its QMP socket); a VM found
    /// already paused for a write error (taken over from a host agent that died) is
    /// reported as paused at once. Without QMP the machine runs unwatched, said in the log.
    pub(crate) async fn start(machine: &Machine, state: &SharedState) -> Monitor {
        let mut monitor = Monitor {
            name: machine.name.clone(),
            data_disk: machine.files.data_disk(),
            reserve: machine.files.space_reserve(),
            qmp: None,
            paused: false,
            paused_tx: tokio::sync::watch::channel(None).0,
            reported: Vec::new(),
        };
        match Qmp::connect(&machine.files.qmp_events_socket()).await {
            Ok(qmp) => monitor.qmp = Some(qmp),
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "cannot follow QEMU's events: a full host disk will pause the VM without `rmachine status` saying why");
                return monitor;
            }
        }
        monitor.hold_reserve();
        let status = match &monitor.qmp {
            Some((qmp, _)) => qmp.status().await,
            None => return monitor,
        };
        match status {
            Ok(status) if status == "io-error" => monitor.pause(state, "a write"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "cannot read QEMU's run state"),
        }
        monitor
    }

    /// A monitor of nothing (a VM not run by QEMU).
    pub(crate) fn none(machine: &Machine) -> Monitor {
        Monitor {
            name: machine.name.clone(),
            data_disk: machine.files.data_disk(),
            reserve: machine.files.space_reserve(),
            qmp: None,
            paused: false,
            paused_tx: tokio::sync::watch::channel(None).0,
            reported: Vec::new(),
        }
    }

    /// Whether the VM is paused for lack of host space.
    pub(crate) fn paused(&self) -> bool {
        self.paused
    }

    /// The pause's reason as it changes (`None` while the VM runs).
    pub(crate) fn paused_watch(&self) -> rmachine_hostproxy::Paused {
        self.paused_tx.subscribe()
    }

    /// QEMU's next event; never returns without a QMP connection.
    pub(crate) async fn next_event(&mut self) -> QmpEvent {
        match &mut self.qmp {
            Some((_, events)) => events.recv().await.unwrap_or(QmpEvent::Closed),
            None => std::future::pending().await,
        }
    }

    /// Acts on one of QEMU's events.
    pub(crate) fn on_event(&mut self, event: QmpEvent, state: &SharedState) {
        match event {
            QmpEvent::BlockIoError {
                nospace: true,
                action,
                operation,
                ..
            } if action == "stop" => {
                if !self.paused {
                    self.pause(state, &format!("a {operation}"));
                }
            }
            QmpEvent::BlockIoError {
                device,
                operation,
                action,
                reason,
                ..
            } => {
                let warning = format!(
                    "the host could not {operation} the disk {device} ({reason}); QEMU's action: {action}"
                );
                if !self.reported.contains(&warning) {
                    tracing::error!("{warning}");
                    state.update(|s| s.warnings.push(warning.clone()));
                    self.reported.push(warning);
                }
            }
            QmpEvent::Resume if self.paused => {
                self.paused = false;
                self.paused_tx.send_replace(None);
                state.update(|s| {
                    s.state = State::Running;
                    s.detail.clear();
                });
                tracing::info!("the VM continues: the host disk has free space again");
                self.hold_reserve();
            }
            QmpEvent::Closed => {
                // QEMU exited: the VM's supervision sees it.
                self.qmp = None;
            }
            QmpEvent::Stop | QmpEvent::Resume => {}
        }
    }

    /// While paused: continues the VM once its host filesystem has room again.
    pub(crate) async fn try_resume(&mut self) {
        let free = match rmachine_machine::sys::fs::free_space(&self.data_disk) {
            Ok(free) => free,
            Err(e) => {
                tracing::debug!(error = %e, "cannot read the host disk's free space");
                return;
            }
        };
        if free < RESUME_FREE_BYTES {
            return;
        }
        let Some((qmp, _)) = &self.qmp else { return };
        tracing::info!(
            free_mib = free >> 20,
            "the host disk has room again: continuing the VM"
        );
        if let Err(e) = qmp.execute("cont").await {
            tracing::warn!(error = %format!("{e:#}"), "cannot continue the VM");
        }
    }

    /// Lets go of the space held beside `state.json`, then records the pause and its
    /// reason (state first: the log is on the full filesystem too).
    fn pause(&mut self, state: &SharedState, what: &str) {
        self.paused = true;
        let _ = std::fs::remove_file(&self.reserve);
        let reason = paused_reason(&self.name, &self.data_disk, what);
        self.paused_tx.send_replace(Some(reason.clone()));
        state.update(|s| {
            s.state = State::Paused(reason.clone());
            s.detail.clear();
        });
        tracing::error!(data_disk = %self.data_disk.display(), "{reason}");
    }

    /// Holds [`RESERVE_BYTES`] on the machine's filesystem (written, not sparse).
    fn hold_reserve(&self) {
        if let Err(e) = std::fs::write(&self.reserve, vec![0u8; RESERVE_BYTES]) {
            let _ = std::fs::remove_file(&self.reserve);
            tracing::warn!(error = %e, path = %self.reserve.display(), "cannot hold space for the machine's state");
        }
    }

    /// Lets go of the held space (the host agent is exiting).
    pub(crate) fn release(&self) {
        let _ = std::fs::remove_file(&self.reserve);
    }
}

/// What `rmachine status` says of a VM paused for lack of host space.
fn paused_reason(name: &str, data_disk: &std::path::Path, what: &str) -> String {
    format!(
        "the VM is paused: the host disk holding {} is full ({what} to the machine's data disk failed: no space left on device). \
         Free space on that filesystem: the machine continues by itself once {} MiB are free, with nothing lost \
         (`rmachine stop {name}` stops it instead, losing the writes it was making)",
        data_disk.display(),
        RESUME_FREE_BYTES >> 20
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_paused_reason_names_the_file_and_the_way_out() {
        let reason = paused_reason("dev", std::path::Path::new("/m/data.img"), "a write");
        assert!(reason.contains("paused"), "{reason}");
        assert!(reason.contains("/m/data.img is full"), "{reason}");
        assert!(reason.contains("once 64 MiB are free"), "{reason}");
        assert!(reason.contains("rmachine stop dev"), "{reason}");
    }
}
