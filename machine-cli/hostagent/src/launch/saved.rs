//! Saving a running QEMU VM into the machine folder at `rmachine stop`, and resuming it at
//! the next start, with QEMU's own migration to and from a file (`stop`, then
//! `migrate "exec:cat > FILE"`; at the start `-incoming defer`, `migrate-incoming
//! "exec:cat FILE"`, then `cont`). See [`rmachine_machine::saved_state`] for the files and
//! what a resume checks.
//!
//! What QEMU can carry is QEMU's to say: a device it cannot migrate (7.2's vhost-user-fs,
//! the shared folders) shows in `query-migrate`'s `blocked-reasons`, and the stop is then a
//! full shutdown that says why.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use rmachine_machine::driver::BackendChoice;
use rmachine_machine::guest_link::Carrier;
use rmachine_machine::saved_state::{self, DiskStamp, SavedHeader, SAVED_VERSION};
use rmachine_machine::state::StopReport;
use rmachine_machine::store::Machine;
use serde_json::json;

use super::qmp::{shell_quote, Qmp};
use super::RunningVm;
use crate::SharedState;

/// How long the guest may take to flush its writes to the data disk.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(120);
/// How long writing or reading the VM's memory may take (software emulation, a loaded
/// host and a few GiB of guest memory).
const MIGRATION_TIMEOUT: Duration = Duration::from_secs(600);
/// How long QEMU may take to exit once saved, or to create its QMP socket.
const QEMU_TIMEOUT: Duration = Duration::from_secs(30);

/// What became of a save.
pub(crate) enum SaveOutcome {
    /// Saved; QEMU has exited.
    Saved(StopReport),
    /// Not saved, and why, before anything was lost: the VM still runs (shut it down).
    NotSaved(String),
    /// The VM stopped (its writes flushed) but its state could not be kept: why.
    Lost(String),
}

/// Saves the running VM of `machine` (QEMU, `image`) and ends QEMU: the guest first
/// flushes its writes to the data disk, so that a state discarded later costs the running
/// processes only.
pub(crate) async fn save_qemu(
    machine: &Machine,
    vm: &mut RunningVm,
    carrier: &Carrier,
    image: &str,
) -> SaveOutcome {
    let Some(devices) = vm.devices.clone() else {
        return SaveOutcome::NotSaved(
            "this VM was taken over from a host agent that exited, which leaves its devices unknown to this one: it is not saved".into(),
        );
    };
    let began = Instant::now();
    let mut qmp = match Qmp::connect(&machine.files.qmp_socket(), Duration::from_secs(5)).await {
        Ok(q) => q,
        Err(e) => return SaveOutcome::NotSaved(format!("{e:#}")),
    };
    let version = match qmp.version().await {
        Ok(v) => v,
        Err(e) => return SaveOutcome::NotSaved(format!("{e:#}")),
    };
    match qmp.blocked_reasons().await {
        Ok(reasons) if reasons.is_empty() => {}
        Ok(reasons) => return SaveOutcome::NotSaved(blocked(machine, &version, &reasons)),
        Err(e) => return SaveOutcome::NotSaved(format!("{e:#}")),
    }
    let flush_started = Instant::now();
    if let Err(e) = flush_guest(carrier).await {
        return SaveOutcome::NotSaved(format!(
            "the guest could not flush its writes to the data disk first ({e:#})"
        ));
    }
    let flush_ms = flush_started.elapsed().as_millis() as u64;
    let state_path = machine.files.saved_state();
    // Written only by this save (an older state was discarded at the start that read it).
    let _ = saved_state::discard(&machine.files);
    let migrated = async {
        qmp.execute("stop", None).await?;
        // The state holds the guest's memory: its owner's alone, before QEMU writes it.
        rmachine_machine::sys::fs::create_private(&state_path)
            .with_context(|| format!("cannot create {}", state_path.display()))?;
        let uri = format!("exec:cat > {}", shell_quote(&state_path));
        qmp.execute("migrate", Some(json!({ "uri": uri }))).await?;
        qmp.wait_migration(MIGRATION_TIMEOUT).await
    };
    if let Err(e) = migrated.await {
        let _ = std::fs::remove_file(&state_path);
        // The VM goes on as before; the caller shuts it down.
        if let Err(cont) = qmp.execute("cont", None).await {
            tracing::warn!(error = %format!("{cont:#}"), "cannot resume the VM after a failed save");
        }
        return SaveOutcome::NotSaved(format!("QEMU could not save the VM ({e:#})"));
    }
    // Saved: QEMU ends (its block layer flushed the disks when the VM stopped).
    let _ = qmp.execute("quit", None).await;
    if tokio::time::timeout(QEMU_TIMEOUT, vm.vm.wait())
        .await
        .is_err()
    {
        tracing::warn!("QEMU did not exit within {QEMU_TIMEOUT:?} after the save; killing it");
        vm.kill().await;
    }
    let save_ms = began.elapsed().as_millis() as u64;
    match keep(
        machine, &devices, &version, image, carrier, flush_ms, save_ms,
    ) {
        Ok(header) => SaveOutcome::Saved(StopReport {
            saved: true,
            reason: None,
            size_bytes: Some(header.state_size_bytes),
            flush_ms: Some(flush_ms),
            save_ms: Some(save_ms),
        }),
        Err(e) => {
            let _ = saved_state::discard(&machine.files);
            SaveOutcome::Lost(format!(
                "the VM was stopped with its writes flushed, but its saved state could not be kept ({e:#}): the next start boots cold"
            ))
        }
    }
}

/// The stop's one line when QEMU cannot migrate the VM.
fn blocked(machine: &Machine, version: &str, reasons: &[String]) -> String {
    if reasons.iter().any(|r| r.contains("vhost-user-fs")) {
        let folders: Vec<String> = (machine.spec.mounts.iter())
            .map(|m| m.path.display().to_string())
            .collect();
        format!(
            "QEMU {version} cannot save a VM with shared folders ({}): its vhost-user-fs device is not migratable. A newer QEMU (8.2 or later) with a virtiofsd that supports migration would lift this; machines created with --no-mounts are saved",
            folders.join(", ")
        )
    } else {
        format!("QEMU {version} cannot save this VM: {}", reasons.join("; "))
    }
}

/// Flushes the guest's page cache to its disks (`sync` through the agent's exec service).
async fn flush_guest(carrier: &Carrier) -> anyhow::Result<()> {
    let run = rmachine_machine::exec::run(carrier, &["sync"], b"");
    let outcome = tokio::time::timeout(FLUSH_TIMEOUT, run)
        .await
        .map_err(|_| anyhow::anyhow!("no answer within {FLUSH_TIMEOUT:?}"))??;
    if outcome.code != 0 {
        bail!(
            "sync exited with {}: {}",
            outcome.code,
            outcome.stderr_text()
        );
    }
    Ok(())
}

/// Makes the saved state durable and complete: synced, then its header written last.
fn keep(
    machine: &Machine,
    devices: &[String],
    version: &str,
    image: &str,
    carrier: &Carrier,
    flush_ms: u64,
    save_ms: u64,
) -> anyhow::Result<SavedHeader> {
    let Carrier::Tcp { token, .. } = carrier else {
        bail!("a QEMU VM reached without a token cannot be resumed");
    };
    let state_path = machine.files.saved_state();
    let state = std::fs::File::open(&state_path)
        .with_context(|| format!("cannot open {}", state_path.display()))?;
    state
        .sync_all()
        .with_context(|| format!("cannot sync {}", state_path.display()))?;
    let state_size_bytes = state.metadata()?.len();
    if state_size_bytes == 0 {
        bail!("QEMU wrote an empty state");
    }
    let data_path = machine.files.data_disk();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&data_path)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("cannot sync {}", data_path.display()))?;
    let header = SavedHeader {
        version: SAVED_VERSION,
        backend: "qemu".into(),
        vmm_version: version.into(),
        image: image.into(),
        settings: serde_json::to_value(&machine.spec)?,
        devices: devices.to_vec(),
        token: token.clone(),
        state_size_bytes,
        data_disk: DiskStamp::of(&data_path)?,
        saved_at_unix: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        flush_ms,
        save_ms,
    };
    saved_state::write_header(&machine.files, &header)
        .with_context(|| format!("cannot write {}", machine.files.saved_header().display()))?;
    // The rename of the header is durable with its folder.
    std::fs::File::open(machine.files.dir())
        .and_then(|d| d.sync_all())
        .with_context(|| format!("cannot sync {}", machine.files.dir().display()))?;
    Ok(header)
}

/// A resumed VM and when each step of its resume finished.
pub(crate) struct Resumed {
    pub vm: RunningVm,
    /// QEMU started, paused, waiting for the state.
    pub started: Instant,
    /// The state loaded.
    pub loaded: Instant,
    /// The VM running again.
    pub running: Instant,
    pub size_bytes: u64,
}

/// Starts QEMU paused on the machine's saved state (`saved`, read from its header), loads
/// it, removes it (the VM runs on from here: the state is stale) and lets the VM run.
/// Any failure kills the new QEMU and says why; the caller boots cold.
pub(crate) async fn resume_qemu(
    machine: &Machine,
    choice: &BackendChoice,
    state: &SharedState,
    saved: &SavedHeader,
) -> anyhow::Result<Resumed> {
    let mut vm = super::launch_qemu(machine, choice, state, Some(saved)).await?;
    let started = Instant::now();
    let loaded = async {
        let mut qmp = Qmp::connect(&machine.files.qmp_socket(), QEMU_TIMEOUT).await?;
        let version = qmp.version().await?;
        saved.check_vmm_version(&version)?;
        let uri = format!("exec:cat {}", shell_quote(&machine.files.saved_state()));
        qmp.execute("migrate-incoming", Some(json!({ "uri": uri })))
            .await?;
        // QEMU 7.2 exits when it cannot load a state: its log says why.
        tokio::select! {
            r = qmp.wait_migration(MIGRATION_TIMEOUT) => r.context("QEMU could not load the saved state")?,
            status = vm.vm.wait() => bail!(
                "QEMU could not load the saved state and exited ({status}): {}",
                log_tail(machine)
            ),
        }
        let loaded = Instant::now();
        // From here the VM runs on: the state must never be loaded again.
        saved_state::discard(&machine.files).context("cannot remove the loaded saved state")?;
        qmp.execute("cont", None).await?;
        anyhow::Ok(loaded)
    };
    match loaded.await {
        Ok(loaded) => Ok(Resumed {
            vm,
            started,
            loaded,
            running: Instant::now(),
            size_bytes: saved.state_size_bytes,
        }),
        Err(e) => {
            vm.kill().await;
            Err(e)
        }
    }
}

/// QEMU's last log lines, on one line.
fn log_tail(machine: &Machine) -> String {
    let text = std::fs::read_to_string(machine.files.vmm_log()).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = lines[lines.len().saturating_sub(3)..].join(" / ");
    if tail.is_empty() {
        "its log is empty".into()
    } else {
        tail
    }
}
