//! A minimal i8042 keyboard controller at ports 0x60 (data) and 0x64 (status/command): enough
//! for Linux to find it, the CPU reset line (command 0xFE, what `reboot=k` uses) and a
//! Ctrl-Alt-Del key sequence for graceful shutdown.

use std::collections::VecDeque;
use std::sync::Arc;

use super::persist::I8042State;
use crate::bus::BusDevice;
use crate::interrupt::InterruptLine;

/// Called when the guest pulses the CPU reset line.
pub type ResetHandler = Box<dyn Fn() + Send>;

/// Status register bits.
mod defs {
    /// Output buffer full.
    pub const SB_OUT_DATA_AVAIL: u8 = 0x01;
    /// System flag (self test passed).
    pub const SB_SYS_FLAG: u8 = 0x04;
    /// Last write was a command.
    pub const SB_CMD_DATA: u8 = 0x08;
    /// Keyboard not inhibited.
    pub const SB_KBD_ENABLED: u8 = 0x10;

    /// Control byte: keyboard interrupt enabled.
    pub const CB_KBD_INT: u8 = 0x01;
    /// Control byte: POST passed.
    pub const CB_POST_OK: u8 = 0x04;

    pub const CMD_READ_CTR: u8 = 0x20;
    pub const CMD_WRITE_CTR: u8 = 0x60;
    pub const CMD_AUX_TEST: u8 = 0xa9;
    pub const CMD_SELF_TEST: u8 = 0xaa;
    pub const CMD_KBD_TEST: u8 = 0xab;
    pub const CMD_READ_INPUT: u8 = 0xc0;
    pub const CMD_READ_OUTP: u8 = 0xd0;
    pub const CMD_WRITE_OUTP: u8 = 0xd1;
    pub const CMD_WRITE_KBD_OUTBUF: u8 = 0xd2;
    pub const CMD_WRITE_AUX_OUTBUF: u8 = 0xd3;
    pub const CMD_WRITE_AUX: u8 = 0xd4;
    pub const CMD_RESET_CPU: u8 = 0xfe;

    /// Keyboard acknowledge.
    pub const KBD_ACK: u8 = 0xfa;
    /// Keyboard "resend" (no such device, for the aux port).
    pub const KBD_RESEND: u8 = 0xfe;

    /// Ctrl, Alt, Del make codes (scan code set 2, as Firecracker sends them).
    pub const CTRL_ALT_DEL: [u8; 4] = [0x14, 0x11, 0xe0, 0x71];
    /// Output buffer capacity.
    pub const BUF_SIZE: usize = 16;
}

use defs::*;

/// The i8042 controller.
pub struct I8042 {
    status: u8,
    control: u8,
    outp: u8,
    pending_cmd: u8,
    buf: VecDeque<u8>,
    irq: Arc<dyn InterruptLine>,
    on_reset: ResetHandler,
}

impl I8042 {
    /// A controller raising `irq` (IRQ 1) and calling `on_reset` on a CPU reset.
    pub fn new(irq: Arc<dyn InterruptLine>, on_reset: ResetHandler) -> Self {
        I8042 {
            status: SB_SYS_FLAG | SB_KBD_ENABLED,
            control: CB_POST_OK | CB_KBD_INT,
            outp: 0,
            pending_cmd: 0,
            buf: VecDeque::with_capacity(BUF_SIZE),
            irq,
            on_reset,
        }
    }

    /// The registers and output buffer, for a snapshot.
    pub fn save_state(&self) -> I8042State {
        I8042State {
            status: self.status,
            control: self.control,
            outp: self.outp,
            pending_cmd: self.pending_cmd,
            buf: self.buf.iter().copied().collect(),
        }
    }

    /// Puts the controller back in a saved state.
    pub fn restore_state(&mut self, state: &I8042State) -> Result<(), String> {
        if state.buf.len() > BUF_SIZE {
            return Err(format!(
                "i8042: {} bytes in the output buffer, at most {BUF_SIZE}",
                state.buf.len()
            ));
        }
        self.status = state.status;
        self.control = state.control;
        self.outp = state.outp;
        self.pending_cmd = state.pending_cmd;
        self.buf = state.buf.iter().copied().collect();
        Ok(())
    }

    /// Queues Ctrl-Alt-Del; Linux answers with an orderly reboot (`ctrl_alt_del`).
    pub fn trigger_ctrl_alt_del(&mut self) {
        for b in CTRL_ALT_DEL {
            self.push(b);
        }
        self.raise();
    }

    fn push(&mut self, byte: u8) {
        if self.buf.len() < BUF_SIZE {
            self.buf.push_back(byte);
            self.status |= SB_OUT_DATA_AVAIL;
        }
    }

    fn raise(&self) {
        if self.control & CB_KBD_INT != 0 && !self.buf.is_empty() {
            let _ = self.irq.trigger();
        }
    }

    fn read_data(&mut self) -> u8 {
        let byte = self.buf.pop_front().unwrap_or(0);
        if self.buf.is_empty() {
            self.status &= !SB_OUT_DATA_AVAIL;
        } else {
            self.raise();
        }
        byte
    }

    fn write_command(&mut self, cmd: u8) {
        self.status |= SB_CMD_DATA;
        self.pending_cmd = 0;
        match cmd {
            CMD_READ_CTR => self.push(self.control),
            CMD_WRITE_CTR | CMD_WRITE_OUTP | CMD_WRITE_KBD_OUTBUF | CMD_WRITE_AUX_OUTBUF
            | CMD_WRITE_AUX => self.pending_cmd = cmd,
            CMD_AUX_TEST | CMD_KBD_TEST => self.push(0x00),
            CMD_SELF_TEST => self.push(0x55),
            CMD_READ_INPUT => self.push(0x00),
            CMD_READ_OUTP => self.push(self.outp),
            CMD_RESET_CPU => {
                tracing::info!("guest pulsed the cpu reset line through the i8042");
                (self.on_reset)();
            }
            // Enable/disable keyboard and aux port and anything else: accepted, no effect.
            _ => {}
        }
    }

    fn write_data(&mut self, value: u8) {
        self.status &= !SB_CMD_DATA;
        match std::mem::take(&mut self.pending_cmd) {
            CMD_WRITE_CTR => self.control = value,
            CMD_WRITE_OUTP => self.outp = value,
            CMD_WRITE_KBD_OUTBUF | CMD_WRITE_AUX_OUTBUF => {
                self.push(value);
                self.raise();
            }
            // There is no mouse.
            CMD_WRITE_AUX => self.push(KBD_RESEND),
            _ => {
                // A command for the keyboard itself: acknowledge everything.
                self.push(KBD_ACK);
                if value == 0xff {
                    self.push(0xaa); // self test passed after reset
                }
                self.raise();
            }
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if data.len() != 1 {
            return;
        }
        data[0] = match offset {
            0 => self.read_data(),
            4 => self.status,
            _ => 0,
        };
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if data.len() != 1 {
            return;
        }
        match offset {
            0 => self.write_data(data[0]),
            4 => self.write_command(data[0]),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::interrupt::CountingInterrupt;
    use std::sync::atomic::{AtomicBool, Ordering};

    fn device() -> (I8042, Arc<AtomicBool>, Arc<CountingInterrupt>) {
        let reset = Arc::new(AtomicBool::new(false));
        let flag = reset.clone();
        let irq = Arc::new(CountingInterrupt::default());
        let dev = I8042::new(
            irq.clone(),
            Box::new(move || flag.store(true, Ordering::SeqCst)),
        );
        (dev, reset, irq)
    }

    #[test]
    fn test_reset_command_calls_handler() {
        let (mut dev, reset, _) = device();
        dev.write(4, &[CMD_RESET_CPU]);
        assert!(reset.load(Ordering::SeqCst));
    }

    #[test]
    fn test_control_byte_roundtrip() {
        let (mut dev, _, _) = device();
        dev.write(4, &[CMD_WRITE_CTR]);
        dev.write(0, &[0x45]);
        dev.write(4, &[CMD_READ_CTR]);
        let mut status = [0u8];
        dev.read(4, &mut status);
        assert_eq!(status[0] & SB_OUT_DATA_AVAIL, 1);
        let mut data = [0u8];
        dev.read(0, &mut data);
        assert_eq!(data[0], 0x45);
        dev.read(4, &mut status);
        assert_eq!(status[0] & SB_OUT_DATA_AVAIL, 0);
    }

    #[test]
    fn test_ctrl_alt_del_sequence_and_interrupts() {
        let (mut dev, _, irq) = device();
        dev.trigger_ctrl_alt_del();
        let mut got = Vec::new();
        let mut b = [0u8];
        for _ in 0..4 {
            dev.read(0, &mut b);
            got.push(b[0]);
        }
        assert_eq!(got, CTRL_ALT_DEL);
        assert_eq!(irq.count.load(Ordering::Relaxed), 4);
    }

    #[test]
    fn test_buffer_is_bounded() {
        let (mut dev, _, _) = device();
        for _ in 0..100 {
            dev.write(0, &[0xf4]);
        }
        assert_eq!(dev.buf.len(), BUF_SIZE);
    }
}
