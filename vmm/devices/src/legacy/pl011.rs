//! An ARM PrimeCell UART (PL011), the console of aarch64 guests (`ttyAMA0`): enough of it
//! for Linux's `amba-pl011` driver and its earlycon. Transmit is immediate (the FIFO is always
//! empty, never busy); receive has a 32-byte FIFO fed by [`Pl011::enqueue_input`].
//!
//! Registers and bits: ARM DDI 0183G (PrimeCell UART PL011 Technical Reference Manual),
//! section 3.2 "Summary of registers" and 3.3 "Register descriptions".

use std::collections::VecDeque;
use std::io::Write;
use std::sync::Arc;

use super::persist::Pl011State;
use super::serial::SerialOutput;
use crate::bus::BusDevice;
use crate::interrupt::InterruptLine;

mod defs {
    //! ARM DDI 0183G, 3.2: register offsets and bits.

    /// Data register.
    pub const DR: u64 = 0x000;
    /// Receive status / error clear.
    pub const RSR_ECR: u64 = 0x004;
    /// Flag register.
    pub const FR: u64 = 0x018;
    /// IrDA low-power counter.
    pub const ILPR: u64 = 0x020;
    /// Integer baud rate divisor.
    pub const IBRD: u64 = 0x024;
    /// Fractional baud rate divisor.
    pub const FBRD: u64 = 0x028;
    /// Line control.
    pub const LCR_H: u64 = 0x02c;
    /// Control.
    pub const CR: u64 = 0x030;
    /// Interrupt FIFO level select.
    pub const IFLS: u64 = 0x034;
    /// Interrupt mask set/clear.
    pub const IMSC: u64 = 0x038;
    /// Raw interrupt status.
    pub const RIS: u64 = 0x03c;
    /// Masked interrupt status.
    pub const MIS: u64 = 0x040;
    /// Interrupt clear.
    pub const ICR: u64 = 0x044;
    /// DMA control.
    pub const DMACR: u64 = 0x048;
    /// First of the PeriphID0..3 and PCellID0..3 registers (3.3.14, 3.3.15).
    pub const ID_BASE: u64 = 0xfe0;
    /// Size of the register window.
    pub const WINDOW: u64 = 0x1000;
    /// The ID registers' values: part 0x011, designer ARM (0x41), revision 1 (r1p5), then the
    /// PrimeCell id 0xb105f00d, one byte per 32-bit register.
    pub const ID: [u8; 8] = [0x11, 0x10, 0x14, 0x00, 0x0d, 0xf0, 0x05, 0xb1];

    /// FR: receive FIFO empty.
    pub const FR_RXFE: u32 = 1 << 4;
    /// FR: receive FIFO full.
    pub const FR_RXFF: u32 = 1 << 6;
    /// FR: transmit FIFO empty.
    pub const FR_TXFE: u32 = 1 << 7;

    /// Interrupt bits (IMSC, RIS, MIS, ICR): receive.
    pub const INT_RX: u32 = 1 << 4;
    /// Transmit.
    pub const INT_TX: u32 = 1 << 5;
    /// Receive timeout.
    pub const INT_RT: u32 = 1 << 6;
    /// Every interrupt bit (11 of them).
    pub const INT_ALL: u32 = 0x7ff;

    /// CR after reset: transmit and receive enabled (3.3.8).
    pub const CR_RESET: u32 = 0x300;
    /// IFLS after reset: both FIFOs at half (3.3.9).
    pub const IFLS_RESET: u32 = 0x12;
    /// Depth of the receive FIFO.
    pub const RX_FIFO: usize = 32;
}

use defs::*;

/// The PL011 UART.
pub struct Pl011 {
    out: SerialOutput,
    irq: Arc<dyn InterruptLine>,
    regs: Pl011State,
    rx: VecDeque<u8>,
}

impl Pl011 {
    /// A UART raising `irq`, writing to `out`.
    pub fn new(irq: Arc<dyn InterruptLine>, out: SerialOutput) -> Self {
        Pl011 {
            out,
            irq,
            regs: Pl011State {
                cr: CR_RESET,
                ifls: IFLS_RESET,
                ..Pl011State::default()
            },
            rx: VecDeque::with_capacity(RX_FIFO),
        }
    }

    /// The registers and unread input, for a snapshot.
    pub fn save_state(&self) -> Pl011State {
        Pl011State {
            in_buffer: self.rx.iter().copied().collect(),
            ..self.regs.clone()
        }
    }

    /// Puts the UART back in a saved state, keeping its output.
    pub fn restore_state(&mut self, state: &Pl011State) -> Result<(), String> {
        if state.in_buffer.len() > RX_FIFO {
            return Err(format!(
                "pl011: {} bytes of input, the fifo holds {RX_FIFO}",
                state.in_buffer.len()
            ));
        }
        self.regs = Pl011State {
            in_buffer: Vec::new(),
            ..state.clone()
        };
        self.rx = state.in_buffer.iter().copied().collect();
        Ok(())
    }

    /// Queues input bytes for the guest; returns how many fit.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        let n = bytes.len().min(RX_FIFO - self.rx.len());
        self.rx.extend(&bytes[..n]);
        if n > 0 {
            let before = self.masked();
            self.regs.ris |= INT_RX | INT_RT;
            self.raise_if_new(before);
        }
        n
    }

    /// Writes out a pending partial line.
    pub fn flush(&mut self) {
        self.out.flush_pending();
    }

    fn masked(&self) -> u32 {
        self.regs.ris & self.regs.imsc
    }

    /// The line is edge-triggered: raise it when an enabled interrupt became pending.
    fn raise_if_new(&self, before: u32) {
        if self.masked() & !before != 0 {
            if let Err(e) = self.irq.trigger() {
                crate::warn_guest!(error = %e, "pl011 interrupt failed");
            }
        }
    }

    fn read_reg(&mut self, offset: u64) -> u32 {
        match offset {
            DR => {
                let byte = self.rx.pop_front().unwrap_or(0);
                if self.rx.is_empty() {
                    self.regs.ris &= !(INT_RX | INT_RT);
                }
                u32::from(byte)
            }
            RSR_ECR => 0,
            FR => {
                let mut fr = FR_TXFE;
                if self.rx.is_empty() {
                    fr |= FR_RXFE;
                }
                if self.rx.len() >= RX_FIFO {
                    fr |= FR_RXFF;
                }
                fr
            }
            ILPR => self.regs.ilpr,
            IBRD => self.regs.ibrd,
            FBRD => self.regs.fbrd,
            LCR_H => self.regs.lcr_h,
            CR => self.regs.cr,
            IFLS => self.regs.ifls,
            IMSC => self.regs.imsc,
            RIS => self.regs.ris,
            MIS => self.masked(),
            DMACR => self.regs.dmacr,
            o if (ID_BASE..WINDOW).contains(&o) && o % 4 == 0 => {
                u32::from(ID[((o - ID_BASE) / 4) as usize])
            }
            _ => 0,
        }
    }

    fn write_reg(&mut self, offset: u64, value: u32) {
        let before = self.masked();
        match offset {
            DR => {
                // Transmission is immediate: the FIFO is empty again at once.
                let _ = self.out.write_all(&[value as u8]);
                self.regs.ris |= INT_TX;
            }
            RSR_ECR => {}
            ILPR => self.regs.ilpr = value & 0xff,
            IBRD => self.regs.ibrd = value & 0xffff,
            FBRD => self.regs.fbrd = value & 0x3f,
            LCR_H => self.regs.lcr_h = value & 0xff,
            CR => self.regs.cr = value & 0xffff,
            IFLS => self.regs.ifls = value & 0x3f,
            IMSC => self.regs.imsc = value & INT_ALL,
            ICR => {
                self.regs.ris &= !value;
                // Received bytes still waiting keep their interrupt pending.
                if !self.rx.is_empty() {
                    self.regs.ris |= INT_RX | INT_RT;
                }
            }
            DMACR => self.regs.dmacr = value & 0x7,
            _ => crate::warn_guest!(offset, "pl011: write to a read-only or unknown register"),
        }
        self.raise_if_new(before);
    }
}

impl BusDevice for Pl011 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        // 8-, 16- and 32-bit reads of a register's low bytes; anything else reads as zero.
        if data.len() <= 4 && offset % 4 == 0 {
            let value = self.read_reg(offset).to_le_bytes();
            data.copy_from_slice(&value[..data.len()]);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if data.len() <= 4 && offset % 4 == 0 {
            let mut value = [0u8; 4];
            value[..data.len()].copy_from_slice(data);
            self.write_reg(offset, u32::from_le_bytes(value));
        } else {
            crate::warn_guest!(offset, len = data.len(), "pl011: unaligned or wide access");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::interrupt::CountingInterrupt;
    use std::io::Read;
    use std::sync::atomic::Ordering;

    fn read32(uart: &mut Pl011, offset: u64) -> u32 {
        let mut b = [0u8; 4];
        uart.read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    fn write32(uart: &mut Pl011, offset: u64, value: u32) {
        uart.write(offset, &value.to_le_bytes());
    }

    #[test]
    fn test_pl011_identifies_as_primecell_uart() {
        let mut uart = Pl011::new(
            Arc::new(CountingInterrupt::default()),
            SerialOutput::new(None, false),
        );
        let id: Vec<u32> = (0..8).map(|i| read32(&mut uart, 0xfe0 + 4 * i)).collect();
        assert_eq!(id, [0x11, 0x10, 0x14, 0x00, 0x0d, 0xf0, 0x05, 0xb1]);
        assert_eq!(
            read32(&mut uart, FR) & (FR_TXFE | FR_RXFE),
            FR_TXFE | FR_RXFE
        );
    }

    #[test]
    fn test_pl011_writes_lines_to_log() {
        let log = tempfile::NamedTempFile::new().unwrap();
        let mut uart = Pl011::new(
            Arc::new(CountingInterrupt::default()),
            SerialOutput::new(Some(log.reopen().unwrap()), false),
        );
        for b in b"hello\nworld" {
            uart.write(DR, &[*b]);
        }
        uart.flush();
        let mut content = String::new();
        log.reopen().unwrap().read_to_string(&mut content).unwrap();
        assert_eq!(content, "hello\nworld");
    }

    #[test]
    fn test_pl011_input_interrupt_and_fifo() {
        let irq = Arc::new(CountingInterrupt::default());
        let mut uart = Pl011::new(irq.clone(), SerialOutput::new(None, false));
        // Masked: pending but no edge.
        assert_eq!(uart.enqueue_input(b"ab"), 2);
        assert_eq!(irq.count.load(Ordering::Relaxed), 0);
        assert_eq!(read32(&mut uart, RIS) & INT_RX, INT_RX);
        // Unmasking a pending interrupt raises the line.
        write32(&mut uart, IMSC, INT_RX | INT_RT);
        assert_eq!(irq.count.load(Ordering::Relaxed), 1);
        assert_eq!(read32(&mut uart, DR), u32::from(b'a'));
        assert_eq!(read32(&mut uart, DR), u32::from(b'b'));
        assert_eq!(read32(&mut uart, FR) & FR_RXFE, FR_RXFE);
        assert_eq!(read32(&mut uart, MIS), 0);
        // A full FIFO takes no more.
        assert_eq!(uart.enqueue_input(&[b'x'; 40]), RX_FIFO);
        assert_eq!(read32(&mut uart, FR) & FR_RXFF, FR_RXFF);
        assert_eq!(irq.count.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn test_pl011_garbage_access_is_harmless() {
        let mut uart = Pl011::new(
            Arc::new(CountingInterrupt::default()),
            SerialOutput::new(None, false),
        );
        let mut wide = [0xffu8; 8];
        uart.read(0, &mut wide);
        assert_eq!(wide, [0; 8]);
        uart.write(3, &[1, 2]);
        uart.write(RIS, &[0xff]);
        let mut b = [0u8; 4];
        uart.read(0xffd, &mut b);
        assert_eq!(b, [0; 4]);
    }

    #[test]
    fn test_pl011_state_roundtrip() {
        let mut uart = Pl011::new(
            Arc::new(CountingInterrupt::default()),
            SerialOutput::new(None, false),
        );
        write32(&mut uart, IBRD, 13);
        uart.enqueue_input(b"q");
        let state = uart.save_state();
        let mut other = Pl011::new(
            Arc::new(CountingInterrupt::default()),
            SerialOutput::new(None, false),
        );
        other.restore_state(&state).unwrap();
        assert_eq!(read32(&mut other, IBRD), 13);
        assert_eq!(read32(&mut other, DR), u32::from(b'q'));
        let too_much = Pl011State {
            in_buffer: vec![0; 33],
            ..state
        };
        assert!(other.restore_state(&too_much).is_err());
    }
}
