//! Turns a validated configuration into a running VM, and waits for it to stop.

use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use devices::bus::lock;
use devices::GuestMemory;
use hypervisor::{Vm, VmConfig as HvVmConfig};

use crate::api::VmController;
use crate::boot::{self, loader, mptable, regs, BootError};
use crate::config::ResolvedConfig;
use crate::device_manager::{DeviceError, DeviceManager};
use crate::memory::{self, MemoryError};
use crate::preopen::Preopened;
use crate::seccomp::Filters;
use crate::vcpu::{spawn_vcpus, BootSetup, VcpuControl, VmmExit};

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
}

/// A running VM.
pub struct Vmm {
    handle: Arc<VmmHandle>,
    exit_rx: Receiver<VmmExit>,
    _vm: Arc<dyn Vm>,
    _mem: GuestMemory,
}

/// What the control API reaches.
pub struct VmmHandle {
    config: ResolvedConfig,
    devices: DeviceManager,
    control: Arc<VcpuControl>,
    exit_tx: Mutex<Sender<VmmExit>>,
    started: Instant,
    boot_protocol: boot::BootProtocol,
}

impl Vmm {
    /// Builds and starts the VM described by `config`, with the host files and sockets opened
    /// beforehand in `preopened`; its threads install `filters`.
    pub fn start(
        config: ResolvedConfig,
        preopened: &mut Preopened,
        filters: &Arc<Filters>,
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

        let kernel =
            loader::load_kernel(&mem, &config.config.kernel.path).map_err(BuildError::Boot)?;
        let initrd = match &config.config.kernel.initrd {
            Some(path) => {
                Some(loader::load_initrd(&mem, path, kernel.end).map_err(BuildError::Boot)?)
            }
            None => None,
        };
        let (exit_tx, exit_rx) = channel();
        let mut devices = DeviceManager::new(
            &config,
            vm.clone(),
            &mem,
            exit_tx.clone(),
            filters,
            preopened,
        )
        .map_err(BuildError::Devices)?;
        let cmdline = loader::build_cmdline(&config.cmdline, &devices.virtio_cmdline_entries())
            .map_err(BuildError::Boot)?;
        let cmdline_len = loader::write_cmdline(&mem, &cmdline).map_err(BuildError::Boot)?;
        loader::write_boot_info(&mem, &kernel, cmdline_len, initrd, config.memory_bytes)
            .map_err(BuildError::Boot)?;
        mptable::write(&mem, config.vcpus).map_err(BuildError::Boot)?;
        regs::write_boot_tables(&mem, kernel.protocol).map_err(BuildError::Boot)?;
        let supported_cpuid = hv.supported_cpuid().map_err(BuildError::Hypervisor)?;
        tracing::info!(
            entry = format_args!("{:#x}", kernel.entry),
            protocol = ?kernel.protocol,
            vcpus = config.vcpus,
            memory_mib = config.memory_bytes >> 20,
            cmdline = %cmdline.as_cstring().map(|c| c.to_string_lossy().into_owned()).unwrap_or_default(),
            "booting"
        );

        devices
            .start_event_loop(filters)
            .map_err(BuildError::Devices)?;
        let control = Arc::new(VcpuControl::default());
        spawn_vcpus(
            vm.clone(),
            BootSetup {
                entry: kernel.entry,
                protocol: kernel.protocol,
                supported_cpuid,
                disabled_features: config.disabled_features.clone(),
                vcpu_count: config.vcpus,
            },
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
            boot_protocol: kernel.protocol,
        });
        Ok(Vmm {
            handle,
            exit_rx,
            _vm: vm,
            _mem: mem,
        })
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
            "boot_protocol": format!("{:?}", self.boot_protocol),
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
        tracing::info!("graceful shutdown requested: sending ctrl-alt-del");
        lock(&self.devices.i8042).trigger_ctrl_alt_del();
        Ok(())
    }

    fn poweroff(&self) {
        tracing::info!("power off requested");
        let _ = lock(&self.exit_tx).send(VmmExit::Poweroff);
    }

    fn metrics(&self) -> serde_json::Value {
        serde_json::json!({ "devices": self.devices.metrics() })
    }
}
