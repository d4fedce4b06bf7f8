//! The x86_64 legacy devices: COM1, the i8042 and the CMOS on the I/O-port bus.

use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};

use devices::bus::{lock, Bus};
use devices::legacy::{Cmos, SerialOutput, I8042};
use hypervisor::Vm;

use super::{DeviceError, VmIrq};
use crate::layout::*;
use crate::vcpu::VmmExit;

/// The console UART: an 8250.
pub type Console = devices::legacy::Serial;
/// Its part of a snapshot.
pub type ConsoleState = devices::legacy::persist::SerialState;

/// The legacy devices of a VM.
pub(super) struct Legacy {
    pub serial: Arc<Mutex<Console>>,
    pub i8042: Arc<Mutex<I8042>>,
    pub cmos: Arc<Mutex<Cmos>>,
}

/// Creates COM1, the i8042 (whose reset sends [`VmmExit::GuestReset`] on `exit`) and the
/// CMOS, and places them on `pio`.
pub(super) fn create(
    vm: &Arc<dyn Vm>,
    pio: &mut Bus,
    _mmio: &mut Bus,
    out: SerialOutput,
    exit: Sender<VmmExit>,
) -> Result<Legacy, DeviceError> {
    let serial = Arc::new(Mutex::new(Console::new(
        VmIrq::new(vm.clone(), SERIAL_IRQ),
        out,
    )));
    pio.insert(serial.clone(), SERIAL_PORT, 8)
        .map_err(|e| DeviceError::Bus("serial".into(), e))?;

    let reset_exit = Mutex::new(exit);
    let i8042 = Arc::new(Mutex::new(I8042::new(
        VmIrq::new(vm.clone(), I8042_IRQ),
        Box::new(move || {
            let _ = lock(&reset_exit).send(VmmExit::GuestReset);
        }),
    )));
    pio.insert(i8042.clone(), I8042_PORT, 5)
        .map_err(|e| DeviceError::Bus("i8042".into(), e))?;
    let cmos = Arc::new(Mutex::new(Cmos::new()));
    pio.insert(cmos.clone(), CMOS_PORT, 2)
        .map_err(|e| DeviceError::Bus("cmos".into(), e))?;
    Ok(Legacy {
        serial,
        i8042,
        cmos,
    })
}

/// Asks the guest to shut down: Ctrl-Alt-Del through the i8042.
pub(super) fn request_shutdown(i8042: &Mutex<I8042>) -> Result<(), String> {
    tracing::info!("graceful shutdown requested: sending ctrl-alt-del");
    lock(i8042).trigger_ctrl_alt_del();
    Ok(())
}
