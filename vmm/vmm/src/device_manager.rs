//! Creates the devices of a VM, places them on the I/O-port and MMIO buses, and runs their
//! event loop.

use std::io::Read;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};

use devices::bus::{lock, Bus};
use devices::interrupt::InterruptLine;
use devices::legacy::{Cmos, SerialOutput, I8042};
use devices::metrics::MetricsSource;
use devices::transport::{MmioTransport, MMIO_SIZE};
use devices::virtio::block::{Block, BlockConfig};
use devices::virtio::rng::Rng;
use devices::virtio::vsock::{Vsock, VsockConfig as DeviceVsockConfig};
use devices::GuestMemory;
use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use hypervisor::Vm;

use crate::config::{ResolvedConfig, SlotDevice};
use crate::layout::*;
use crate::preopen::Preopened;
use crate::seccomp::{self, Filters, ThreadKind};
use crate::snapshot::state::{DeviceDoc, SnapshotState};
use crate::snapshot::SnapshotError;
use crate::vcpu::VmmExit;

mod fs;
#[cfg(target_arch = "aarch64")]
mod legacy_aarch64;
#[cfg(target_arch = "x86_64")]
mod legacy_x86_64;
mod net_balloon;

pub use legacy::{Console, ConsoleState};
#[cfg(target_arch = "aarch64")]
use legacy_aarch64 as legacy;
#[cfg(target_arch = "x86_64")]
use legacy_x86_64 as legacy;

/// Errors of device creation.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// A disk could not be opened.
    #[error("cannot create disk {0}")]
    Block(String, #[source] devices::virtio::block::BlockError),
    /// The rng device could not be created.
    #[error("cannot create the rng device")]
    Rng(#[source] devices::virtio::rng::RngError),
    /// The vsock device could not be created.
    #[error("cannot create the vsock device")]
    Vsock(#[source] devices::virtio::vsock::VsockError),
    /// The net device's backend could not be opened; the message names the field.
    #[error("{0}")]
    NetBackend(String, #[source] std::io::Error),
    /// The net device could not be created.
    #[error("cannot create the net device")]
    Net(#[source] devices::virtio::net::NetError),
    /// The balloon device could not be created.
    #[error("cannot create the balloon device")]
    Balloon(#[source] devices::virtio::balloon::BalloonError),
    /// A virtio-fs device could not reach its backend; the first string names the field.
    #[error("{0}: cannot create the virtio-fs device")]
    Fs(String, #[source] devices::virtio::fs::FsError),
    /// A transport could not be created.
    #[error("cannot create the virtio-mmio transport of {0}")]
    Transport(String, #[source] std::io::Error),
    /// Two devices claim one bus range.
    #[error("cannot place {0} on its bus")]
    Bus(String, #[source] devices::bus::BusError),
    /// The event loop could not start.
    #[error("cannot start the device event loop")]
    EventLoop(#[source] std::io::Error),
}

/// An IOAPIC pin of the VM.
pub struct VmIrq {
    vm: Arc<dyn Vm>,
    line: u32,
}

impl VmIrq {
    /// Pin `line` of `vm`.
    pub fn new(vm: Arc<dyn Vm>, line: u32) -> Arc<Self> {
        Arc::new(VmIrq { vm, line })
    }
}

impl InterruptLine for VmIrq {
    fn trigger(&self) -> std::io::Result<()> {
        self.vm.inject_irq(self.line).map_err(std::io::Error::other)
    }
}

/// A virtio device as the VMM reports it.
pub struct VirtioEntry {
    /// Configured id (`disks[i].id`, `vsock`, `rng`).
    pub id: String,
    /// Device kind (`block`, `vsock`, `rng`).
    pub kind: &'static str,
    /// virtio-mmio slot.
    pub slot: u8,
    /// MMIO window.
    pub addr: u64,
    /// IOAPIC pin.
    pub irq: u32,
    /// The transport (and through it the device).
    pub transport: Arc<Mutex<MmioTransport>>,
    /// The device.
    pub device: Arc<Mutex<dyn devices::virtio::VirtioDevice>>,
    /// The transport's counters.
    pub transport_metrics: Arc<dyn MetricsSource>,
    /// The device's counters.
    pub device_metrics: Arc<dyn MetricsSource>,
}

type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// A freshly created virtio device: id, kind, the device for its transport, the same device as
/// an event subscriber, and its counters.
type NewDevice = (
    String,
    &'static str,
    Arc<Mutex<dyn devices::virtio::VirtioDevice>>,
    Subscriber,
    Arc<dyn MetricsSource>,
);

/// The devices' part of a snapshot.
pub struct SavedDevices {
    /// The console UART.
    pub serial: ConsoleState,
    /// The i8042.
    pub i8042: devices::legacy::persist::I8042State,
    /// The CMOS.
    pub cmos: devices::legacy::persist::CmosState,
    /// Virtio devices by slot.
    pub devices: Vec<DeviceDoc>,
}

/// All devices of one VM.
pub struct DeviceManager {
    /// x86 I/O ports.
    pub pio: Arc<Bus>,
    /// Memory-mapped devices.
    pub mmio: Arc<Bus>,
    /// The console UART (COM1 on x86_64, the PL011 on aarch64).
    pub serial: Arc<Mutex<Console>>,
    /// The keyboard controller (reset, Ctrl-Alt-Del).
    pub i8042: Arc<Mutex<I8042>>,
    /// The CMOS.
    pub cmos: Arc<Mutex<Cmos>>,
    /// virtio devices, by slot.
    pub virtio: Vec<VirtioEntry>,
    subscribers: Vec<Subscriber>,
    /// Feed the VMM's stdin to the serial port (started with the event loop, after a restore
    /// put the UART back: input read before would be lost).
    serial_stdin: bool,
}

impl DeviceManager {
    /// Creates every configured device. A guest reset through the i8042 sends
    /// [`VmmExit::GuestReset`] on `exit`.
    pub fn new(
        config: &ResolvedConfig,
        vm: Arc<dyn Vm>,
        mem: &GuestMemory,
        exit: Sender<VmmExit>,
        preopened: &mut Preopened,
    ) -> Result<Self, DeviceError> {
        let mut pio = Bus::new();
        let mut mmio = Bus::new();

        let serial_cfg = config.config.serial.clone().unwrap_or_default();
        let log = preopened.serial_log.take();
        let legacy::Legacy {
            serial,
            i8042,
            cmos,
        } = legacy::create(
            &vm,
            &mut pio,
            &mut mmio,
            SerialOutput::new(log, serial_cfg.stdio),
            exit,
        )?;

        let mut virtio = Vec::new();
        let mut subscribers: Vec<Subscriber> = Vec::new();
        for (&slot, device) in &config.slots {
            let (id, kind, dev, sub, metrics): NewDevice = match device {
                SlotDevice::Disk(i) => {
                    let disk = &config.config.disks[*i];
                    let block = Block::new(BlockConfig {
                        id: disk.id.clone(),
                        path: disk.path.clone(),
                        read_only: disk.read_only,
                    })
                    .map_err(|e| DeviceError::Block(disk.id.clone(), e))?;
                    let metrics = block.metrics();
                    let block = Arc::new(Mutex::new(block));
                    (disk.id.clone(), "block", block.clone(), block, metrics)
                }
                SlotDevice::Rng => {
                    let rng = Rng::new().map_err(DeviceError::Rng)?;
                    let metrics = rng.metrics();
                    let rng = Arc::new(Mutex::new(rng));
                    ("rng".to_string(), "rng", rng.clone(), rng, metrics)
                }
                SlotDevice::Vsock => {
                    let cfg = config
                        .config
                        .vsock
                        .as_ref()
                        .expect("a vsock slot exists only with a vsock config");
                    let vsock_cfg = DeviceVsockConfig {
                        guest_cid: u64::from(cfg.guest_cid),
                        uds_path: cfg.uds_path.clone(),
                    };
                    let vsock = match preopened.vsock.take() {
                        Some(listener) => Vsock::with_listener(vsock_cfg, listener),
                        None => Vsock::new(vsock_cfg),
                    }
                    .map_err(DeviceError::Vsock)?;
                    let metrics = vsock.metrics();
                    let vsock = Arc::new(Mutex::new(vsock));
                    ("vsock".to_string(), "vsock", vsock.clone(), vsock, metrics)
                }
                SlotDevice::Net => net_balloon::create_net(
                    "net",
                    config
                        .config
                        .net
                        .as_ref()
                        .expect("a net slot exists only with a net config"),
                    preopened.tap.take(),
                )?,
                SlotDevice::ExtraNet(i) => net_balloon::create_net(
                    &format!("net{}", i + 1),
                    &config.config.extra_nets[*i],
                    None,
                )?,
                SlotDevice::Balloon => net_balloon::create_balloon(
                    config
                        .config
                        .balloon
                        .as_ref()
                        .expect("a balloon slot exists only with a balloon config"),
                    mem,
                )?,
                SlotDevice::Fs(i) => fs::create_fs(*i, &config.config.filesystems[*i], mem)?,
            };
            let addr = virtio_mmio_addr(slot);
            let irq = virtio_irq(slot);
            let transport =
                MmioTransport::new(mem.clone(), dev.clone(), VmIrq::new(vm.clone(), irq))
                    .map_err(|e| DeviceError::Transport(id.clone(), e))?;
            let transport_metrics = transport.metrics();
            let transport = Arc::new(Mutex::new(transport));
            mmio.insert(transport.clone(), addr, MMIO_SIZE)
                .map_err(|e| DeviceError::Bus(id.clone(), e))?;
            subscribers.push(sub);
            virtio.push(VirtioEntry {
                id,
                kind,
                slot,
                addr,
                irq,
                transport,
                device: dev,
                transport_metrics,
                device_metrics: metrics,
            });
        }
        Ok(DeviceManager {
            pio: Arc::new(pio),
            mmio: Arc::new(mmio),
            serial,
            i8042,
            cmos,
            virtio,
            subscribers,
            serial_stdin: serial_cfg.stdio,
        })
    }

    /// Asks the guest to shut down (Ctrl-Alt-Del on x86_64; aarch64 has no way yet).
    pub fn request_shutdown(&self) -> Result<(), String> {
        legacy::request_shutdown(&self.i8042)
    }

    /// `(address, irq)` of each virtio device, for the kernel command line (x86_64) or the
    /// device tree (aarch64).
    pub fn virtio_cmdline_entries(&self) -> Vec<(u64, u32)> {
        self.virtio.iter().map(|v| (v.addr, v.irq)).collect()
    }

    /// Starts the thread that runs the devices' event handlers, under the devices filter.
    pub fn start_event_loop(&mut self, filters: &Arc<Filters>) -> Result<(), DeviceError> {
        if self.serial_stdin {
            spawn_stdin_reader(self.serial.clone(), filters);
        }
        let mut manager: EventManager<Subscriber> = EventManager::new()
            .map_err(|e| DeviceError::EventLoop(std::io::Error::other(format!("{e:?}"))))?;
        for sub in self.subscribers.drain(..) {
            manager.add_subscriber(sub);
        }
        seccomp::spawn("devices", ThreadKind::Devices, filters, move || loop {
            if let Err(e) = manager.run() {
                tracing::error!(error = ?e, "device event loop failed");
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        })
        .map_err(DeviceError::EventLoop)?;
        Ok(())
    }

    /// Saves the legacy devices and every virtio device (transport registers, queues, the
    /// device's own state) with the VM paused, then runs `quiet` (the memory dump) while every
    /// device is still held, so the device thread changes neither them nor guest memory.
    pub fn save_with<R>(
        &self,
        quiet: impl FnOnce() -> Result<R, SnapshotError>,
    ) -> Result<(SavedDevices, R), SnapshotError> {
        // Devices first, then transports: the vCPUs (the only ones that take a transport and
        // then its device) are paused, and the device thread takes one device at a time.
        let held: Vec<_> = self.virtio.iter().map(|v| lock(&v.device)).collect();
        let mut docs = Vec::with_capacity(self.virtio.len());
        for (v, device) in self.virtio.iter().zip(&held) {
            let transport = lock(&v.transport)
                .save_state_with(&**device)
                .map_err(|why| SnapshotError::Save {
                    what: format!("device {:?}", v.id),
                    why,
                })?;
            docs.push(DeviceDoc {
                slot: v.slot,
                id: v.id.clone(),
                transport,
            });
        }
        let serial = lock(&self.serial);
        let saved = SavedDevices {
            serial: serial.save_state(),
            i8042: lock(&self.i8042).save_state(),
            cmos: lock(&self.cmos).save_state(),
            devices: docs,
        };
        let result = quiet()?;
        drop(serial);
        drop(held);
        Ok((saved, result))
    }

    /// Puts every device back in a snapshot's state; virtio devices that were active are
    /// activated again on their saved queues. Call before the event loop and the vCPUs start.
    pub fn restore(&self, state: &SnapshotState) -> Result<(), SnapshotError> {
        let err = |what: &str| {
            let what = what.to_string();
            move |why: String| SnapshotError::Restore { what, why }
        };
        lock(&self.serial)
            .restore_state(&state.serial)
            .map_err(err("the serial port"))?;
        lock(&self.i8042)
            .restore_state(&state.i8042)
            .map_err(err("the i8042"))?;
        lock(&self.cmos)
            .restore_state(&state.cmos)
            .map_err(err("the cmos"))?;
        for doc in &state.devices {
            let entry = self
                .virtio
                .iter()
                .find(|v| v.slot == doc.slot)
                .ok_or_else(|| SnapshotError::Restore {
                    what: format!("device {:?}", doc.id),
                    why: format!("no device in slot {}", doc.slot),
                })?;
            lock(&entry.transport)
                .restore_state(&doc.transport)
                .map_err(err(&format!("device {:?}", doc.id)))?;
        }
        Ok(())
    }

    /// Per-device counters as JSON.
    pub fn metrics(&self) -> serde_json::Value {
        let mut map = serde_json::Map::new();
        for v in &self.virtio {
            map.insert(
                v.id.clone(),
                serde_json::json!({
                    "kind": v.kind,
                    "device": v.device_metrics.snapshot(),
                    "transport": v.transport_metrics.snapshot(),
                }),
            );
        }
        serde_json::Value::Object(map)
    }
}

/// Feeds the VMM's stdin to the serial port.
fn spawn_stdin_reader(serial: Arc<Mutex<Console>>, filters: &Arc<Filters>) {
    let spawned = seccomp::spawn(
        "serial-stdin",
        ThreadKind::SerialStdin,
        filters,
        move || {
            let mut stdin = std::io::stdin();
            let mut buf = [0u8; 64];
            loop {
                match stdin.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let mut sent = 0;
                        while sent < n {
                            sent += lock(&serial).enqueue_input(&buf[sent..n]);
                            if sent < n {
                                std::thread::sleep(std::time::Duration::from_millis(5));
                            }
                        }
                    }
                }
            }
        },
    );
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start the serial stdin reader");
    }
}
