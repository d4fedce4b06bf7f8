//! The reaper: the one place that waits for child processes.
//!
//! As PID 1 the agent inherits every orphan in the guest, and each of them must be waited
//! for or it stays a zombie. So exactly one task calls `waitpid(-1, WNOHANG)`, whenever
//! SIGCHLD arrives (and on a slow tick, in case a signal was missed), and hands the exit
//! status of each child the agent started to whoever waits for it. Nothing else in the
//! agent may wait for a process: no `tokio::process`, no `Command::status`/`output`, no
//! `Child::wait`. They would race with the reaper for the same exit statuses.
//!
//! A child is registered under the same lock the reaper holds while it reaps, and the
//! registration happens before that lock is released after the spawn, so the reaper
//! never sees an exit before its waiter is known (std's own `waitpid` on a failed exec
//! also happens under the lock, so it cannot find its child gone either).

use std::collections::HashMap;
use std::io::Read;
use std::process::{ChildStderr, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::oneshot;
use tracing::{debug, warn};

/// PATH given to every child (PID 1 gets no PATH from the kernel).
pub const CHILD_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Reaping also runs on this tick, so a lost SIGCHLD delays a status, never loses it.
const REAP_TICK: Duration = Duration::from_secs(5);

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// Exited with this code.
    Code(i32),
    /// Killed by this signal.
    Signal(Signal),
}

impl ExitStatus {
    pub fn success(self) -> bool {
        self == ExitStatus::Code(0)
    }
}

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitStatus::Code(code) => write!(f, "exited with code {code}"),
            ExitStatus::Signal(sig) => write!(f, "killed by {}", sig.as_str()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReaperError {
    #[error("cannot start {program}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the reaper stopped before {program} (pid {pid}) was reaped")]
    Gone { program: String, pid: u32 },
    #[error("{program} {status}: {stderr}")]
    Failed {
        program: String,
        status: ExitStatus,
        stderr: String,
    },
}

impl ReaperError {
    /// Whether the program does not exist (retrying will not help).
    pub fn is_not_found(&self) -> bool {
        matches!(self, ReaperError::Spawn { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
    }
}

type Waiters = HashMap<i32, oneshot::Sender<ExitStatus>>;

/// Handle to the reaper; clones share it.
#[derive(Clone, Default)]
pub struct Reaper {
    waiters: Arc<Mutex<Waiters>>,
}

/// A child started through the reaper.
pub struct Process {
    pid: u32,
    program: String,
    exit: oneshot::Receiver<ExitStatus>,
    /// Set once the exit status was received (the receiver must not be polled again).
    status: Option<Result<ExitStatus, ()>>,
    pub stdout: Option<ChildStdout>,
    pub stderr: Option<ChildStderr>,
}

/// Output of a command run to completion.
#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// A command with the environment every child of the agent gets: nothing inherited from
/// the kernel's init environment, PATH and HOME set, stdin from /dev/null.
pub fn command(program: &str) -> Command {
    let mut command = Command::new(program);
    command
        .env_clear()
        .env("PATH", CHILD_PATH)
        .env("HOME", "/root")
        .stdin(Stdio::null());
    command
}

impl Reaper {
    /// Starts the reaping task on the current runtime. Never fails: without a SIGCHLD
    /// stream (which should not happen) it reaps on a fast tick instead.
    pub fn start() -> Reaper {
        let reaper = Reaper::default();
        let task = reaper.clone();
        let sigchld = match signal(SignalKind::child()) {
            Ok(stream) => Some(stream),
            Err(e) => {
                warn!(error = %e, "cannot watch SIGCHLD; reaping every 100 ms instead");
                None
            }
        };
        tokio::spawn(async move {
            let mut sigchld = sigchld;
            let tick = if sigchld.is_some() {
                REAP_TICK
            } else {
                Duration::from_millis(100)
            };
            let mut interval = tokio::time::interval(tick);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                task.reap_all();
                match sigchld.as_mut() {
                    Some(stream) => {
                        tokio::select! {
                            _ = stream.recv() => {}
                            _ = interval.tick() => {}
                        }
                    }
                    None => {
                        interval.tick().await;
                    }
                }
            }
        });
        reaper
    }

    fn lock(&self) -> MutexGuard<'_, Waiters> {
        // A poisoned lock only means a panic elsewhere; the map itself is still valid.
        self.waiters.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Reaps every child that has exited, delivering the statuses of registered ones.
    pub fn reap_all(&self) {
        let mut waiters = self.lock();
        loop {
            let (pid, status) = match waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, ExitStatus::Code(code)),
                Ok(WaitStatus::Signaled(pid, sig, _)) => (pid, ExitStatus::Signal(sig)),
                Ok(WaitStatus::StillAlive) => break,
                // Stops and continues are only reported with WUNTRACED / WCONTINUED.
                Ok(other) => {
                    debug!(?other, "waitpid reported a non-exit status");
                    continue;
                }
                Err(Errno::EINTR) => continue,
                Err(Errno::ECHILD) => break,
                Err(e) => {
                    warn!(error = %e, "waitpid failed");
                    break;
                }
            };
            match waiters.remove(&pid.as_raw()) {
                // The waiter may be gone (its task ended); the status is then unwanted.
                Some(tx) => {
                    let _ = tx.send(status);
                }
                None => debug!(pid = pid.as_raw(), %status, "reaped an orphan"),
            }
        }
    }

    /// Starts a command and registers it, so its exit status reaches [`Process::wait`].
    pub fn spawn(&self, command: &mut Command) -> Result<Process, ReaperError> {
        let program = command.get_program().to_string_lossy().into_owned();
        let mut waiters = self.lock();
        let mut child = command.spawn().map_err(|source| ReaperError::Spawn {
            program: program.clone(),
            source,
        })?;
        let pid = child.id();
        let (tx, rx) = oneshot::channel();
        // Linux pids are at most 2^22, far inside i32.
        waiters.insert(pid as i32, tx);
        drop(waiters);
        Ok(Process {
            pid,
            program,
            exit: rx,
            status: None,
            stdout: child.stdout.take(),
            stderr: child.stderr.take(),
        })
        // `child` is dropped without waiting: dropping a std Child neither kills nor waits.
    }

    /// Runs a command to completion, capturing its output.
    pub async fn run(&self, command: &mut Command) -> Result<Output, ReaperError> {
        command.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut process = self.spawn(command)?;
        let stdout = read_all(process.stdout.take());
        let stderr = read_all(process.stderr.take());
        let status = process.wait().await?;
        let stdout = stdout.await.unwrap_or_default();
        let stderr = stderr.await.unwrap_or_default();
        Ok(Output {
            status,
            stdout,
            stderr,
        })
    }

    /// Runs a command to completion; an exit other than 0 is an error carrying stderr.
    pub async fn run_checked(&self, command: &mut Command) -> Result<Output, ReaperError> {
        let output = self.run(command).await?;
        let program = command.get_program().to_string_lossy();
        if !output.stdout.trim().is_empty() {
            debug!(%program, stdout = %output.stdout.trim(), "command output");
        }
        if output.status.success() {
            Ok(output)
        } else {
            Err(ReaperError::Failed {
                program: program.into_owned(),
                status: output.status,
                stderr: output.stderr.trim().to_string(),
            })
        }
    }
}

/// Reads a pipe to its end on a blocking thread.
fn read_all<R: Read + Send + 'static>(pipe: Option<R>) -> tokio::task::JoinHandle<String> {
    tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        if let Some(mut pipe) = pipe {
            // A read error leaves what was read so far; the exit status tells the rest.
            let _ = pipe.read_to_end(&mut out);
        }
        String::from_utf8_lossy(&out).into_owned()
    })
}

impl Process {
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Waits for the exit status. Can be called again (and from `select!`) after it
    /// returned.
    pub async fn wait(&mut self) -> Result<ExitStatus, ReaperError> {
        let status = match self.status {
            Some(status) => status,
            None => {
                let status = (&mut self.exit).await.map_err(|_| ());
                self.status = Some(status);
                status
            }
        };
        status.map_err(|()| ReaperError::Gone {
            program: self.program.clone(),
            pid: self.pid,
        })
    }

    /// The exit status if the process was already reaped.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            match self.exit.try_recv() {
                Ok(status) => self.status = Some(Ok(status)),
                Err(oneshot::error::TryRecvError::Closed) => self.status = Some(Err(())),
                Err(oneshot::error::TryRecvError::Empty) => {}
            }
        }
        self.status.and_then(Result::ok)
    }

    /// Sends a signal, unless the process was already reaped (its pid may be reused).
    pub fn signal(&mut self, sig: Signal) {
        if self.try_status().is_some() {
            return;
        }
        if let Err(e) = kill(Pid::from_raw(self.pid as i32), sig) {
            debug!(pid = self.pid, error = %e, "cannot signal {}", self.program);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Reaping waits for any child of the process, so tests that spawn children must not
    /// run concurrently in one process (nextest runs each test in its own process, plain
    /// `cargo test` does not).
    pub(crate) static CHILDREN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

    #[tokio::test]
    async fn test_reaper_delivers_exit_codes_and_signals() {
        let _guard = CHILDREN.lock().await;
        let reaper = Reaper::start();
        let mut p = reaper.spawn(command("sh").args(["-c", "exit 7"])).unwrap();
        assert_eq!(p.wait().await.unwrap(), ExitStatus::Code(7));
        // Waiting again returns the same status instead of panicking.
        assert_eq!(p.wait().await.unwrap(), ExitStatus::Code(7));

        let mut p = reaper.spawn(command("sleep").arg("30")).unwrap();
        p.signal(Signal::SIGKILL);
        let status = tokio::time::timeout(Duration::from_secs(10), p.wait())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(status, ExitStatus::Signal(Signal::SIGKILL));
        assert_eq!(status.to_string(), "killed by SIGKILL");
    }

    #[tokio::test]
    async fn test_reaper_reaps_unregistered_children() {
        let _guard = CHILDREN.lock().await;
        let reaper = Reaper::start();
        // A child started behind the reaper's back (like an orphan handed to PID 1).
        let child = std::process::Command::new("true").spawn().unwrap();
        let pid = Pid::from_raw(child.id() as i32);
        drop(child);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            reaper.reap_all();
            // A zombie keeps its /proc entry until it is reaped.
            if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "child was never reaped"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn test_run_captures_output_and_failure() {
        let _guard = CHILDREN.lock().await;
        let reaper = Reaper::start();
        let out = reaper
            .run_checked(command("sh").args(["-c", "echo out; echo err >&2"]))
            .await
            .unwrap();
        assert_eq!(
            (out.stdout.as_str(), out.stderr.as_str()),
            ("out\n", "err\n")
        );
        let err = reaper
            .run_checked(command("sh").args(["-c", "echo broken >&2; exit 3"]))
            .await
            .unwrap_err();
        assert_eq!(err.to_string(), "sh exited with code 3: broken");
        let err = reaper
            .run(&mut command("/nonexistent/program"))
            .await
            .unwrap_err();
        assert!(err.is_not_found(), "{err}");
    }
}
