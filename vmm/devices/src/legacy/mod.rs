//! Legacy PC devices: the 8250 serial port, the i8042 keyboard controller (reset and
//! Ctrl-Alt-Del), and a small CMOS/RTC.

pub mod cmos;
pub mod i8042;
pub mod persist;
pub mod serial;

pub use cmos::Cmos;
pub use i8042::{ResetHandler, I8042};
pub use serial::{Serial, SerialOutput};
