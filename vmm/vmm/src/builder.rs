//! Turns a validated configuration into a running VM, and waits for it to stop.

use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use devices::bus::lock;
use devices::GuestMemory;
use hypervisor::{Vm, VmConfig as HvVmConfig};

use crate::api::VmController;
use crate::boot::{self, BootError};
use crate::config::ResolvedConfig;
use crate::device_manager::{DeviceError, DeviceManager};
use crate::memory::{self, MemoryError};
use crate::preopen::Preopened;
use crate::seccomp::Filters;
use crate::snapshot::state::{Settings, SnapshotState, VcpuStateDoc, VmStateDoc};
use crate::snapshot::{self, LoadedSnapshot, SnapshotError};
use crate::vcpu::{spawn_vcpus, VcpuControl, VcpuStart, VmmExit};

/// Errors of VM construction; each names the step.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The hypervisor is unusable.
    #[error("cannot open the hypervisor")]
    Hypervisor(#[source] hypervisor::HypervisorError),
    /// More vCPUs than the hypervisor allows.
    #[error("vcpus: {0} is more than the hypervisor's maximum of {1}")]
    TooManyVcpus(u8, u32),
    /// Creating the VM failed.
    #[error("cannot create the vm")]
    CreateVm(#[source] hypervisor::HypervisorError),
    /// Guest memory.
    #[error("cannot set up guest memory")]
    Memory(#[source] MemoryError),
    /// Kernel, initrd, command line or boot structures.
    #[error("cannot prepare the boot")]
    Boot(#[source] BootError),
    /// Devices.
    #[error("cannot create the devices")]
    Devices(#[source] DeviceError),
    /// Threads.
    #[error("cannot start the vcpu threads")]
    Vcpus(#[source] std::io::Error),
    /// Restoring from a snapshot.
    #[error("cannot restore the snapshot")]
    Restore(#[source] SnapshotError),
}

/// A running VM.
pub struct Vmm {
    handle: Arc<VmmHandle>,
    exit_rx: Receiver<VmmExit>,
}

/// What the control API reaches.
pub struct VmmHandle {
    config: ResolvedConfig,
    devices: DeviceManager,
    control: Arc<VcpuControl>,
    exit_tx: Mutex<Sender<VmmExit>>,
    started: Instant,
    /// `Some` for a cold boot.
    boot_protocol: Option<String>,
    /// The snapshot folder this VM was restored from.
    restored_from: Option<std::path::PathBuf>,
    vm: Arc<dyn Vm>,
    mem: GuestMemory,
}

impl Vmm {
    /// Builds and starts the VM described by `config`, with the host files and sockets opened
    /// beforehand in `preopened`; its threads install `filters`.
    pub fn start(
        config: ResolvedConfig,
        preopened: &mut Preopened,
        filters: &Arc<Filters>,
        restore: Option<LoadedSnapshot>,
    ) -> Result<Self, BuildError> {
        let started = Instant::now();
        let hv = hypervisor::new().map_err(BuildError::Hypervisor)?;
        let caps = hv.capabilities();
        if u32::from(config.vcpus) > caps.max_vcpus {
            return Err(BuildError::TooManyVcpus(config.vcpus, caps.max_vcpus));
        }
        let vm = hv
            .create_vm(&HvVmConfig {
                vcpu_count: config.vcpus,
            })
            .map_err(BuildError::CreateVm)?;
        let shared = !config.config.filesystems.is_empty();
        let mem = memory::create(config.memory_bytes, shared).map_err(BuildError::Memory)?;
        // The VM that comes back owns the memory it maps.
        let vm = memory::register(vm, &mem).map_err(BuildError::Memory)?;
        let (exit_tx, exit_rx) = channel();

        let restored_vcpus = match &restore {
            Some(snap) => {
                Some(restore_machine(snap, vm.as_ref(), &mem).map_err(BuildError::Restore)?)
            }
            None => None,
        };
        let mut devices = DeviceManager::new(&config, vm.clone(), &mem, exit_tx.clone(), preopened)
            .map_err(BuildError::Devices)?;
        let (start, boot_protocol, restored_from) = match (&restore, restored_vcpus) {
            (Some(snap), Some(states)) => {
                devices.restore(&snap.state).map_err(BuildError::Restore)?;
                tracing::info!(
                    snapshot = %snap.dir.display(),
                    vcpus = config.vcpus,
                    memory_mib = config.memory_bytes >> 20,
                    "restoring"
                );
                (VcpuStart::Restore(states), None, Some(snap.dir.clone()))
            }
            _ => {
                let boot = boot::prepare(&config, &mem, &devices, hv.as_ref())
                    .map_err(BuildError::Boot)?;
                let protocol = boot.protocol_name();
                (VcpuStart::Boot(boot), Some(protocol), None)
            }
        };

        devices
            .start_event_loop(filters)
            .map_err(BuildError::Devices)?;
        let control = Arc::new(VcpuControl::default());
        spawn_vcpus(
            vm.clone(),
            start,
            devices.pio.clone(),
            devices.mmio.clone(),
            control.clone(),
            exit_tx.clone(),
            filters.clone(),
        )
        .map_err(BuildError::Vcpus)?;
        let handle = Arc::new(VmmHandle {
            config,
            devices,
            control,
            exit_tx: Mutex::new(exit_tx),
            started,
            boot_protocol,
            restored_from,
            vm,
            mem,
        });
        Ok(Vmm { handle, exit_rx })
    }

    /// The handle the control API drives.
    pub fn handle(&self) -> Arc<VmmHandle> {
        self.handle.clone()
    }

    /// Waits until the VM stops; flushes the console.
    pub fn wait(self) -> VmmExit {
        let reason = self
            .exit_rx
            .recv()
            .unwrap_or(VmmExit::Error("every exit sender is gone".to_string()));
        lock(&self.handle.devices.serial).flush();
        reason
    }
}

/// Loads a snapshot's memory and VM-wide state; returns the vCPU states to restore.
fn restore_machine(
    snap: &LoadedSnapshot,
    vm: &dyn Vm,
    mem: &GuestMemory,
) -> Result<Vec<hypervisor::x86_64::VcpuState>, SnapshotError> {
    let loading = Instant::now();
    snapshot::memory::check(mem, &snap.memory, &snap.state.memory)?;
    let read = snapshot::memory::load(mem, &snap.memory)?;
    let vm_state = snap.state.vm.to_state().map_err(SnapshotError::Corrupt)?;
    let clock = vm
        .restore_state(&vm_state)
        .map_err(|e| SnapshotError::Restore {
            what: "the vm's interrupt controllers, timer and clock".into(),
            why: error_chain(&e),
        })?;
    tracing::info!(
        memory_read_mib = read >> 20,
        load_ms = loading.elapsed().as_millis() as u64,
        clock_advanced_ms = clock.advanced_ns / 1_000_000,
        clock_by_hypervisor = clock.by_hypervisor,
        "snapshot memory loaded; guest clock moved on by the time since the snapshot"
    );
    snap.state
        .vcpus
        .iter()
        .enumerate()
        .map(|(i, doc)| {
            doc.to_state()
                .map_err(|e| SnapshotError::Corrupt(format!("vcpu {i}: {e}")))
        })
        .collect()
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}

impl VmmHandle {
    /// Pauses the VM (if it runs) and writes a snapshot into `dir` (created if missing); the
    /// VM stays paused. Returns what was written and how long it took.
    pub fn snapshot(&self, dir: &std::path::Path) -> Result<serde_json::Value, SnapshotError> {
        let started = Instant::now();
        std::fs::create_dir_all(dir)
            .map_err(|e| SnapshotError::Io("create the snapshot folder", e))?;
        if !self.control.is_paused() {
            self.control.pause().map_err(|why| SnapshotError::Save {
                what: "the vcpus".into(),
                why: format!("cannot pause: {why}"),
            })?;
        }
        let paused = started.elapsed();
        let vcpus = self
            .control
            .save_vcpus(usize::from(self.config.vcpus))
            .map_err(|why| SnapshotError::Save {
                what: "the vcpus".into(),
                why,
            })?;
        let vm_state = self.vm.save_state().map_err(|e| SnapshotError::Save {
            what: "the vm's interrupt controllers, timer and clock".into(),
            why: error_chain(&e),
        })?;
        let memory_path = dir.join(snapshot::MEMORY_FILE);
        let (saved, layout) = self
            .devices
            .save_with(|| snapshot::memory::save(&self.mem, &memory_path))?;
        let memory_done = started.elapsed();
        let state = SnapshotState {
            vmm_version: env!("CARGO_PKG_VERSION").to_string(),
            taken_at_unix_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            settings: Settings::of(&self.config),
            memory: layout,
            vm: VmStateDoc::of(&vm_state),
            vcpus: vcpus.iter().map(VcpuStateDoc::of).collect(),
            serial: saved.serial,
            i8042: saved.i8042,
            cmos: saved.cmos,
            devices: saved.devices,
        };
        let state_path = dir.join(snapshot::STATE_FILE);
        snapshot::file::write(&state_path, &state)?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        let state_bytes = std::fs::metadata(&state_path).map(|m| m.len()).unwrap_or(0);
        let total = started.elapsed();
        tracing::info!(
            dir = %dir.display(),
            memory_data_mib = state.memory.data_bytes >> 20,
            total_ms = total.as_millis() as u64,
            "snapshot written; the vm stays paused"
        );
        Ok(serde_json::json!({
            "dir": dir,
            "memory_bytes": state.memory.size_bytes,
            "memory_data_bytes": state.memory.data_bytes,
            "state_bytes": state_bytes,
            "pause_ms": paused.as_secs_f64() * 1e3,
            "memory_ms": (memory_done - paused).as_secs_f64() * 1e3,
            "total_ms": total.as_secs_f64() * 1e3,
        }))
    }
}

impl VmController for VmmHandle {
    fn describe(&self) -> serde_json::Value {
        let devices: Vec<serde_json::Value> = self
            .devices
            .virtio
            .iter()
            .map(|v| {
                serde_json::json!({
                    "id": v.id, "kind": v.kind, "slot": v.slot,
                    "mmio_addr": format!("{:#x}", v.addr), "irq": v.irq,
                })
            })
            .collect();
        serde_json::json!({
            "state": if self.control.is_paused() { "paused" } else { "running" },
            "vcpus": self.config.vcpus,
            "memory_mib": self.config.memory_bytes >> 20,
            "boot_protocol": self.boot_protocol,
            "restored_from": self.restored_from,
            "uptime_ms": self.started.elapsed().as_millis() as u64,
            "devices": devices,
            "config": self.config.config,
        })
    }

    fn pause(&self) -> Result<(), String> {
        self.control.pause()
    }

    fn resume(&self) -> Result<(), String> {
        self.control.resume();
        Ok(())
    }

    fn shutdown(&self) -> Result<(), String> {
        self.devices.request_shutdown()
    }

    fn poweroff(&self) {
        tracing::info!("power off requested");
        let _ = lock(&self.exit_tx).send(VmmExit::Poweroff);
    }

    fn metrics(&self) -> serde_json::Value {
        serde_json::json!({ "devices": self.devices.metrics() })
    }

    fn snapshot(&self, dir: Option<std::path::PathBuf>) -> Result<serde_json::Value, String> {
        let dir = dir
            .or_else(|| self.config.config.snapshot_dir.clone())
            .ok_or_else(|| {
                "no snapshot folder: send {\"dir\": PATH} or set snapshot_dir in the configuration"
                    .to_string()
            })?;
        self.snapshot(&dir).map_err(|e| error_chain(&e))
    }
}
