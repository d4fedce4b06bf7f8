//! The aarch64 legacy devices: the PL011 console on the MMIO bus. There is no i8042 or CMOS
//! on this machine; the two objects exist unplugged (no bus, no interrupt) only because the
//! snapshot document, which is x86_64's, has their fields (aarch64 snapshots are refused).

use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};

use devices::bus::Bus;
use devices::interrupt::NoInterrupt;
use devices::legacy::{Cmos, SerialOutput, I8042};
use hypervisor::Vm;

use super::{DeviceError, VmIrq};
use crate::layout::*;
use crate::vcpu::VmmExit;

/// The console UART: a PL011.
pub type Console = devices::legacy::Pl011;
/// Its part of a snapshot.
pub type ConsoleState = devices::legacy::persist::Pl011State;

/// The legacy devices of a VM.
pub(super) struct Legacy {
    pub serial: Arc<Mutex<Console>>,
    pub i8042: Arc<Mutex<I8042>>,
    pub cmos: Arc<Mutex<Cmos>>,
}

/// Creates the PL011 and places it on `mmio`.
pub(super) fn create(
    vm: &Arc<dyn Vm>,
    _pio: &mut Bus,
    mmio: &mut Bus,
    out: SerialOutput,
    _exit: Sender<VmmExit>,
) -> Result<Legacy, DeviceError> {
    let serial = Arc::new(Mutex::new(Console::new(
        VmIrq::new(vm.clone(), SERIAL_IRQ),
        out,
    )));
    mmio.insert(serial.clone(), SERIAL_ADDR, SERIAL_SIZE)
        .map_err(|e| DeviceError::Bus("serial".into(), e))?;
    Ok(Legacy {
        serial,
        i8042: Arc::new(Mutex::new(I8042::new(
            Arc::new(NoInterrupt),
            Box::new(|| {}),
        ))),
        cmos: Arc::new(Mutex::new(Cmos::new())),
    })
}

/// Asks the guest to shut down: not possible yet (that needs a power button: an ACPI GED or a
/// `gpio-keys` node on a PL061); the caller can power off instead.
pub(super) fn request_shutdown(_i8042: &Mutex<I8042>) -> Result<(), String> {
    Err(
        "graceful shutdown is not available for aarch64 guests yet (no power button): \
         power off instead, or shut down from inside the guest"
            .to_string(),
    )
}
