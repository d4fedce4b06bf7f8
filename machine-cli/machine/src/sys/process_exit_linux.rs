use std::time::Duration;

use rustix::process::{pidfd_open, Pid, PidfdFlags};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use super::ProcessId;

/// How often a process without a pidfd is looked at.
const POLL: Duration = Duration::from_millis(500);

/// A pidfd becomes readable when its process ends. Its PID is checked against the start
/// time after the pidfd is open, so the pidfd is of this very process (a PID freed and
/// reused before the open would show another start time).
pub(super) async fn exited(id: &ProcessId) {
    let pidfd = match Pid::from_raw(id.pid as i32).map(|pid| pidfd_open(pid, PidfdFlags::NONBLOCK))
    {
        Some(Ok(fd)) => fd,
        // Gone (ESRCH), or no pidfd here (kernels before 5.3): look at it now and then.
        _ => return poll(id).await,
    };
    if !id.is_alive() {
        return;
    }
    // Deprecated because a `T: AsRawFd` may not own its fd; an `OwnedFd` does, and lives
    // inside the AsyncFd until it is dropped here (the safe way; the replacement is unsafe).
    #[allow(deprecated)]
    let registered = AsyncFd::with_interest(pidfd, Interest::READABLE);
    match registered {
        Ok(fd) => {
            let _ = fd.readable().await;
        }
        Err(_) => poll(id).await,
    }
}

async fn poll(id: &ProcessId) {
    while id.is_alive() {
        tokio::time::sleep(POLL).await;
    }
}
