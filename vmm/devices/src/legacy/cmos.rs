//! A small CMOS/RTC (ports 0x70/0x71): the wall clock in BCD, 24-hour mode, and 128 bytes of
//! NVRAM. Enough for Linux to read the time at boot without probing further.

use std::time::{SystemTime, UNIX_EPOCH};

use super::persist::CmosState;
use crate::bus::BusDevice;

/// RTC registers.
mod defs {
    pub const SECONDS: u8 = 0x00;
    pub const MINUTES: u8 = 0x02;
    pub const HOURS: u8 = 0x04;
    pub const WEEKDAY: u8 = 0x06;
    pub const DAY: u8 = 0x07;
    pub const MONTH: u8 = 0x08;
    pub const YEAR: u8 = 0x09;
    pub const STATUS_A: u8 = 0x0a;
    pub const STATUS_B: u8 = 0x0b;
    pub const STATUS_C: u8 = 0x0c;
    pub const STATUS_D: u8 = 0x0d;
    pub const CENTURY: u8 = 0x32;
    /// 32.768 kHz time base, 1024 Hz rate; update not in progress.
    pub const STATUS_A_VALUE: u8 = 0x26;
    /// 24-hour mode, BCD.
    pub const STATUS_B_VALUE: u8 = 0x02;
    /// Valid RAM and time.
    pub const STATUS_D_VALUE: u8 = 0x80;
}

/// The CMOS/RTC.
pub struct Cmos {
    index: u8,
    nvram: [u8; 128],
    now: fn() -> u64,
}

impl Default for Cmos {
    fn default() -> Self {
        Self::new()
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn bcd(v: u64) -> u8 {
    (((v / 10) % 10) << 4 | (v % 10)) as u8
}

/// (year, month, day) of a day count since 1970-01-01 (H. Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

impl Cmos {
    /// A CMOS reading the host's clock.
    pub fn new() -> Self {
        Cmos {
            index: 0,
            nvram: [0; 128],
            now: unix_now,
        }
    }

    /// The selected register and the NVRAM, for a snapshot.
    pub fn save_state(&self) -> CmosState {
        CmosState {
            index: self.index,
            nvram: self.nvram.to_vec(),
        }
    }

    /// Puts the CMOS back in a saved state.
    pub fn restore_state(&mut self, state: &CmosState) -> Result<(), String> {
        self.nvram = state
            .nvram
            .as_slice()
            .try_into()
            .map_err(|_| format!("cmos: {} bytes of nvram, expected 128", state.nvram.len()))?;
        self.index = state.index & 0x7f;
        Ok(())
    }

    fn register(&self, index: u8) -> u8 {
        let secs = (self.now)();
        let days = (secs / 86_400) as i64;
        let (year, month, day) = civil_from_days(days);
        let tod = secs % 86_400;
        match index {
            defs::SECONDS => bcd(tod % 60),
            defs::MINUTES => bcd(tod / 60 % 60),
            defs::HOURS => bcd(tod / 3600),
            defs::WEEKDAY => bcd(((days + 4).rem_euclid(7) + 1) as u64),
            defs::DAY => bcd(u64::from(day)),
            defs::MONTH => bcd(u64::from(month)),
            defs::YEAR => bcd((year % 100) as u64),
            defs::CENTURY => bcd((year / 100) as u64),
            defs::STATUS_A => defs::STATUS_A_VALUE,
            defs::STATUS_B => defs::STATUS_B_VALUE,
            defs::STATUS_C => 0,
            defs::STATUS_D => defs::STATUS_D_VALUE,
            other => self.nvram[usize::from(other & 0x7f)],
        }
    }
}

impl BusDevice for Cmos {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if data.len() == 1 && offset == 1 {
            data[0] = self.register(self.index);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if data.len() != 1 {
            return;
        }
        match offset {
            // Bit 7 masks NMIs: ignored.
            0 => self.index = data[0] & 0x7f,
            1 if self.index > defs::STATUS_D && self.index != defs::CENTURY => {
                self.nvram[usize::from(self.index)] = data[0]
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_civil_from_days() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
    }

    #[test]
    fn test_rtc_reads_fixed_time_in_bcd() {
        // 2024-02-29 13:45:07 UTC
        let mut cmos = Cmos {
            index: 0,
            nvram: [0; 128],
            now: || 1_709_214_307,
        };
        let mut read = |idx: u8| {
            cmos.write(0, &[idx | 0x80]);
            let mut b = [0u8];
            cmos.read(1, &mut b);
            b[0]
        };
        assert_eq!(read(defs::SECONDS), 0x07);
        assert_eq!(read(defs::MINUTES), 0x45);
        assert_eq!(read(defs::HOURS), 0x13);
        assert_eq!(read(defs::DAY), 0x29);
        assert_eq!(read(defs::MONTH), 0x02);
        assert_eq!(read(defs::YEAR), 0x24);
        assert_eq!(read(defs::CENTURY), 0x20);
        assert_eq!(read(defs::STATUS_B), 0x02);
    }
}
