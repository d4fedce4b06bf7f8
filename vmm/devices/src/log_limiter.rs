//! Rate limiting of guest-triggerable log lines.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Lines allowed per window.
const BURST: u64 = 10;
/// Window length.
const WINDOW_MS: u64 = 5_000;

/// Allows at most [`BURST`] events per [`WINDOW_MS`]; lock-free and `const`-constructible, so
/// each call site can own a `static` one (see [`warn_guest!`](crate::warn_guest)).
#[derive(Debug)]
pub struct LogLimiter {
    window_start_ms: AtomicU64,
    count: AtomicU64,
}

impl Default for LogLimiter {
    fn default() -> Self {
        Self::new()
    }
}

impl LogLimiter {
    /// A limiter with a fresh window.
    pub const fn new() -> Self {
        LogLimiter {
            window_start_ms: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    /// Whether one more line may be logged now.
    pub fn allow(&self) -> bool {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        self.allow_at(now)
    }

    fn allow_at(&self, now_ms: u64) -> bool {
        let start = self.window_start_ms.load(Ordering::Relaxed);
        if now_ms.saturating_sub(start) >= WINDOW_MS
            && self
                .window_start_ms
                .compare_exchange(start, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.count.store(0, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed) < BURST
    }
}

/// `tracing::warn!` limited to a few lines per window per call site: for anything the guest can
/// trigger.
#[macro_export]
macro_rules! warn_guest {
    ($($arg:tt)*) => {{
        static LIMITER: $crate::log_limiter::LogLimiter = $crate::log_limiter::LogLimiter::new();
        if LIMITER.allow() {
            tracing::warn!($($arg)*);
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_limiter_allows_burst_then_resets() {
        let l = LogLimiter::new();
        let allowed = (0..100).filter(|_| l.allow_at(10_000)).count() as u64;
        assert_eq!(allowed, BURST);
        assert!(l.allow_at(10_000 + WINDOW_MS));
    }
}
