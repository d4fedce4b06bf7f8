//! The 8250 serial console (COM1) through `vm-superio`, writing to a log file and optionally
//! to the VMM's stdout.

use std::fs::File;
use std::io::{self, Write};
use std::sync::Arc;

use super::persist::SerialState;
use crate::bus::BusDevice;
use crate::interrupt::InterruptLine;

/// Largest partial line kept before it is written out anyway.
const LINE_LIMIT: usize = 4096;

/// `vm-superio`'s interrupt trigger on top of an [`InterruptLine`].
pub struct SerialIrq(pub Arc<dyn InterruptLine>);

impl vm_superio::Trigger for SerialIrq {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.trigger()
    }
}

/// Where console bytes go: whole lines to the log file, every byte to stdout when enabled.
pub struct SerialOutput {
    log: Option<File>,
    stdout: bool,
    line: Vec<u8>,
}

impl SerialOutput {
    /// Output to `log` (if any) and to stdout (if `stdout`).
    pub fn new(log: Option<File>, stdout: bool) -> Self {
        SerialOutput {
            log,
            stdout,
            line: Vec::with_capacity(256),
        }
    }

    /// Writes out a pending partial line (at exit).
    pub fn flush_pending(&mut self) {
        if let (Some(log), false) = (self.log.as_mut(), self.line.is_empty()) {
            let _ = log.write_all(&self.line);
            let _ = log.flush();
        }
        self.line.clear();
    }
}

impl Write for SerialOutput {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.stdout {
            let mut out = io::stdout().lock();
            let _ = out.write_all(buf);
            let _ = out.flush();
        }
        self.line.extend_from_slice(buf);
        if buf.contains(&b'\n') || self.line.len() >= LINE_LIMIT {
            if let Some(log) = self.log.as_mut() {
                // A full disk must not stop the guest: drop console output instead.
                let _ = log.write_all(&self.line);
            }
            self.line.clear();
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// COM1: an 8250 UART at I/O ports 0x3f8..0x3ff, IRQ 4.
pub struct Serial {
    uart: vm_superio::Serial<SerialIrq, vm_superio::serial::NoEvents, SerialOutput>,
    irq: Arc<dyn InterruptLine>,
}

impl Serial {
    /// A UART raising `irq`, writing to `out`.
    pub fn new(irq: Arc<dyn InterruptLine>, out: SerialOutput) -> Self {
        Serial {
            uart: vm_superio::Serial::new(SerialIrq(irq.clone()), out),
            irq,
        }
    }

    /// The UART's registers and unread input, for a snapshot.
    pub fn save_state(&self) -> SerialState {
        let s = self.uart.state();
        SerialState {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer,
        }
    }

    /// Puts the UART back in a saved state, keeping its output.
    pub fn restore_state(&mut self, state: &SerialState) -> Result<(), String> {
        let s = vm_superio::serial::SerialState {
            baud_divisor_low: state.baud_divisor_low,
            baud_divisor_high: state.baud_divisor_high,
            interrupt_enable: state.interrupt_enable,
            interrupt_identification: state.interrupt_identification,
            line_control: state.line_control,
            line_status: state.line_status,
            modem_control: state.modem_control,
            modem_status: state.modem_status,
            scratch: state.scratch,
            in_buffer: state.in_buffer.clone(),
        };
        let out = std::mem::replace(self.uart.writer_mut(), SerialOutput::new(None, false));
        match vm_superio::Serial::from_state(
            &s,
            SerialIrq(self.irq.clone()),
            vm_superio::serial::NoEvents,
            out,
        ) {
            Ok(uart) => {
                self.uart = uart;
                Ok(())
            }
            Err(e) => Err(format!("serial: {e:?}")),
        }
    }

    /// Queues input bytes for the guest; returns how many fit.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        self.uart.enqueue_raw_bytes(bytes).unwrap_or(0)
    }

    /// Writes out a pending partial line.
    pub fn flush(&mut self) {
        self.uart.writer_mut().flush_pending();
    }
}

impl BusDevice for Serial {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if data.len() == 1 && offset < 8 {
            data[0] = self.uart.read(offset as u8);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if data.len() == 1 && offset < 8 {
            if let Err(e) = self.uart.write(offset as u8, data[0]) {
                crate::warn_guest!(error = ?e, "serial write failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::interrupt::CountingInterrupt;
    use std::io::Read;

    #[test]
    fn test_serial_writes_lines_to_log() {
        let log = tempfile::NamedTempFile::new().unwrap();
        let irq = Arc::new(CountingInterrupt::default());
        let mut serial = Serial::new(irq, SerialOutput::new(Some(log.reopen().unwrap()), false));
        for b in b"hello\nworld" {
            serial.write(0, &[*b]);
        }
        let mut content = String::new();
        log.reopen().unwrap().read_to_string(&mut content).unwrap();
        assert_eq!(content, "hello\n");
        serial.flush();
        content.clear();
        log.reopen().unwrap().read_to_string(&mut content).unwrap();
        assert_eq!(content, "hello\nworld");
    }

    #[test]
    fn test_serial_input_readable() {
        let irq = Arc::new(CountingInterrupt::default());
        let mut serial = Serial::new(irq, SerialOutput::new(None, false));
        assert_eq!(serial.enqueue_input(b"x"), 1);
        let mut lsr = [0u8];
        serial.read(5, &mut lsr);
        assert_eq!(lsr[0] & 1, 1);
        let mut rbr = [0u8];
        serial.read(0, &mut rbr);
        assert_eq!(rbr[0], b'x');
    }
}
