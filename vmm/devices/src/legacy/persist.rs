//! The legacy devices' part of a snapshot: the UART's registers and unread input, the i8042's
//! registers and output buffer, the CMOS index and NVRAM. The PIC, IOAPIC and PIT are the
//! hypervisor's (saved with the VM).

use serde::{Deserialize, Serialize};

/// The PL011 UART (aarch64's console): its registers and unread input.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pl011State {
    /// Control register.
    pub cr: u32,
    /// Line control.
    pub lcr_h: u32,
    /// Integer baud rate divisor.
    pub ibrd: u32,
    /// Fractional baud rate divisor.
    pub fbrd: u32,
    /// IrDA low-power counter.
    pub ilpr: u32,
    /// FIFO levels.
    pub ifls: u32,
    /// Interrupt mask.
    pub imsc: u32,
    /// Raw interrupt status.
    pub ris: u32,
    /// DMA control.
    pub dmacr: u32,
    /// Input not read by the guest yet.
    pub in_buffer: Vec<u8>,
}

/// The 8250 UART.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SerialState {
    /// Divisor latch, low byte.
    pub baud_divisor_low: u8,
    /// Divisor latch, high byte.
    pub baud_divisor_high: u8,
    /// IER.
    pub interrupt_enable: u8,
    /// IIR.
    pub interrupt_identification: u8,
    /// LCR.
    pub line_control: u8,
    /// LSR.
    pub line_status: u8,
    /// MCR.
    pub modem_control: u8,
    /// MSR.
    pub modem_status: u8,
    /// SCR.
    pub scratch: u8,
    /// Input not read by the guest yet.
    pub in_buffer: Vec<u8>,
}

/// The i8042 controller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct I8042State {
    /// Status register.
    pub status: u8,
    /// Control byte.
    pub control: u8,
    /// Output port.
    pub outp: u8,
    /// A command waiting for its data byte.
    pub pending_cmd: u8,
    /// Output buffer.
    pub buf: Vec<u8>,
}

/// The CMOS/RTC (the time itself is the host's, read at each access).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CmosState {
    /// Selected register.
    pub index: u8,
    /// NVRAM, 128 bytes.
    pub nvram: Vec<u8>,
}
