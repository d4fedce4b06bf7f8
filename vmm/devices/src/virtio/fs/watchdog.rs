//! Bounds the VMM's waits for a vhost-user backend.
//!
//! The vhost crate's frontend reads its replies with blocking reads and retries on EAGAIN, so
//! a socket read timeout would make it spin rather than fail. Instead a watchdog thread holds a
//! duplicate of the connection and shuts it down when an exchange overruns its deadline: the
//! pending read then sees end-of-file (vhost: "peer disconnected"), the exchange fails, and the
//! vCPU thread that started or stopped the device is free again. The connection stays dead
//! afterwards; a backend that hung is not trusted again.

use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::Duration;

/// A running deadline for one exchange. [`Watchdog::finish`] ends it.
pub(super) struct Watchdog {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<bool>>,
}

impl Watchdog {
    /// Starts the deadline: after `timeout`, `conn` (a duplicate of the backend connection) is
    /// shut down unless [`Watchdog::finish`] came first.
    pub(super) fn start(conn: &UnixStream, timeout: Duration) -> std::io::Result<Self> {
        let conn = conn.try_clone()?;
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("vhost-user-deadline".into())
            .spawn(move || match stopped.recv_timeout(timeout) {
                Err(RecvTimeoutError::Timeout) => {
                    let _ = conn.shutdown(Shutdown::Both);
                    true
                }
                // finish() dropped the sender (or sent): the exchange ended in time.
                _ => false,
            })?;
        Ok(Watchdog {
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Ends the deadline; true when it had expired (the connection is shut down).
    pub(super) fn finish(mut self) -> bool {
        self.stop.take();
        self.thread.take().is_some_and(|t| t.join().unwrap_or(true))
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.stop.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    #[test]
    fn test_an_overrun_shuts_the_connection_down_and_a_finish_in_time_does_not() {
        let (a, mut b) = UnixStream::pair().unwrap();
        let dog = Watchdog::start(&a, Duration::from_secs(30)).unwrap();
        assert!(!dog.finish());
        // Still connected: nothing to read yet, no end-of-file.
        b.set_nonblocking(true).unwrap();
        assert_eq!(
            b.read(&mut [0u8; 1]).unwrap_err().kind(),
            std::io::ErrorKind::WouldBlock
        );

        let (a, mut b) = UnixStream::pair().unwrap();
        let dog = Watchdog::start(&a, Duration::from_millis(50)).unwrap();
        // A blocking read on the connection returns once the deadline passes.
        let mut a2 = a.try_clone().unwrap();
        assert_eq!(a2.read(&mut [0u8; 1]).unwrap(), 0);
        assert!(dog.finish());
        assert_eq!(b.read(&mut [0u8; 1]).unwrap(), 0);
    }
}
