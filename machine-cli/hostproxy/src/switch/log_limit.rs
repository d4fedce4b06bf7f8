//! A rate limit for warnings that a port's peer can trigger (garbage frames).

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Allows `per_window` events per `window`; counts the rest.
#[derive(Debug)]
pub struct LogLimit {
    per_window: u32,
    window: Duration,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    window_start: Option<Instant>,
    in_window: u32,
    suppressed: u64,
}

impl LogLimit {
    pub const fn new(per_window: u32, window: Duration) -> LogLimit {
        LogLimit {
            per_window,
            window,
            state: Mutex::new(State {
                window_start: None,
                in_window: 0,
                suppressed: 0,
            }),
        }
    }

    /// `Some(n)` when this event may be logged, `n` being how many were suppressed since
    /// the last one logged; `None` when it must not be.
    pub fn check(&self) -> Option<u64> {
        self.check_at(Instant::now())
    }

    fn check_at(&self, now: Instant) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let expired = state
            .window_start
            .is_none_or(|start| now.saturating_duration_since(start) >= self.window);
        if expired {
            state.window_start = Some(now);
            state.in_window = 0;
        }
        if state.in_window < self.per_window {
            state.in_window += 1;
            Some(std::mem::take(&mut state.suppressed))
        } else {
            state.suppressed += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_log_limit_allows_a_burst_then_counts_the_suppressed() {
        let limit = LogLimit::new(2, Duration::from_secs(60));
        let t0 = Instant::now();
        assert_eq!(limit.check_at(t0), Some(0));
        assert_eq!(limit.check_at(t0), Some(0));
        assert_eq!(limit.check_at(t0), None);
        assert_eq!(limit.check_at(t0 + Duration::from_secs(1)), None);
        assert_eq!(limit.check_at(t0 + Duration::from_secs(60)), Some(2));
    }
}
