//! The guest's wall clock. At boot it is set from the host's time on the config disk (a
//! first guess: the disk was written a moment before the VM started); `sync_time`
//! requests later set it precisely.

use std::time::{SystemTime, UNIX_EPOCH};

use nix::sys::time::TimeSpec;
use nix::time::{clock_settime, ClockId};

#[derive(Debug, thiserror::Error)]
pub enum ClockError {
    #[error("host time {0} ns is before 1970 or zero")]
    Invalid(i64),
    #[error("cannot set the clock")]
    Set(#[source] nix::Error),
}

/// Whether the agent may change the clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClockControl {
    /// Set CLOCK_REALTIME (PID 1 in the guest).
    System,
    /// Only compute the offset (development and tests on a host).
    Observe,
}

/// The current wall clock, ns since the epoch (negative before 1970).
pub fn now_unix_ns() -> i64 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_nanos()).unwrap_or(i64::MAX),
    }
}

/// Sets CLOCK_REALTIME.
pub fn set_realtime(unix_ns: i64) -> Result<(), ClockError> {
    if unix_ns <= 0 {
        return Err(ClockError::Invalid(unix_ns));
    }
    let ts = TimeSpec::new(unix_ns / 1_000_000_000, unix_ns % 1_000_000_000);
    clock_settime(ClockId::CLOCK_REALTIME, ts).map_err(ClockError::Set)
}

/// Brings the clock to the host's time; returns guest minus host before the change.
pub fn sync(control: ClockControl, host_unix_ns: i64) -> Result<i64, ClockError> {
    if host_unix_ns <= 0 {
        return Err(ClockError::Invalid(host_unix_ns));
    }
    let offset_ns = now_unix_ns().saturating_sub(host_unix_ns);
    if control == ClockControl::System {
        set_realtime(host_unix_ns)?;
    }
    Ok(offset_ns)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_sync_reports_guest_minus_host_without_touching_the_clock() {
        let host = now_unix_ns() - 5_000_000_000;
        let offset = sync(ClockControl::Observe, host).unwrap();
        assert!((5_000_000_000..6_000_000_000).contains(&offset), "{offset}");
        let host = now_unix_ns() + 2_000_000_000;
        let offset = sync(ClockControl::Observe, host).unwrap();
        assert!(
            (-2_000_000_000..-1_000_000_000).contains(&offset),
            "{offset}"
        );
    }

    #[test]
    fn test_sync_rejects_times_before_the_epoch() {
        assert!(matches!(
            sync(ClockControl::Observe, 0),
            Err(ClockError::Invalid(0))
        ));
        assert!(matches!(set_realtime(-5), Err(ClockError::Invalid(-5))));
    }
}
