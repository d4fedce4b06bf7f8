//! Legacy devices: on x86 the PC's 8250 serial port, i8042 keyboard controller (reset and
//! Ctrl-Alt-Del) and a small CMOS/RTC; on aarch64 the PL011 UART.

pub mod cmos;
pub mod i8042;
pub mod persist;
pub mod pl011;
pub mod serial;

pub use cmos::Cmos;
pub use i8042::{ResetHandler, I8042};
pub use pl011::Pl011;
pub use serial::{Serial, SerialOutput};
