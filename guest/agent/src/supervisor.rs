//! Supervision of one long-running child (containerd, dockerd): start it, report its
//! state, restart it with exponential backoff when it exits, stop it gracefully.
//!
//! The state is published on a `watch` channel of [`ProcessInfo`], the type `info`
//! reports, so the control service and other supervisors read it without asking.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use rmachine_protocol::control::{ProcessInfo, ServiceState};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::logging::error_chain;
use crate::reaper::{self, Process, Reaper};

/// How often readiness is probed while a process starts.
const READY_POLL: Duration = Duration::from_millis(25);

/// How long a killed process may take to be reaped before the supervisor gives up on it.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// When a started process counts as running.
#[derive(Debug, Clone)]
pub enum Readiness {
    /// As soon as it was started.
    #[cfg(test)]
    Started,
    /// Once this unix socket accepts connections.
    UnixSocket(PathBuf),
    /// Once `GET <path>` over this unix socket answers 200.
    HttpOk { socket: PathBuf, path: &'static str },
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Short name for logs (`dockerd`).
    pub name: &'static str,
    pub program: String,
    pub args: Vec<String>,
    /// File that receives stdout and stderr, appended; `None` inherits the agent's.
    pub log_path: Option<PathBuf>,
    pub readiness: Readiness,
}

/// Restart timing.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Delay before the first restart; doubles on each further one.
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// A process that ran this long resets the backoff to `initial_backoff`.
    pub reset_after: Duration,
}

impl Policy {
    /// 1 s doubling up to 30 s, reset after 60 s of uptime.
    pub const ENGINE: Policy = Policy {
        initial_backoff: Duration::from_secs(1),
        max_backoff: Duration::from_secs(30),
        reset_after: Duration::from_secs(60),
    };
}

/// Exponential backoff between restarts.
#[derive(Debug)]
pub struct Backoff {
    policy: Policy,
    next: Duration,
}

impl Backoff {
    pub fn new(policy: Policy) -> Backoff {
        Backoff {
            policy,
            next: policy.initial_backoff,
        }
    }

    /// The delay before restarting a process that ran for `uptime`.
    pub fn delay_after(&mut self, uptime: Duration) -> Duration {
        if uptime >= self.policy.reset_after {
            self.next = self.policy.initial_backoff;
        }
        let delay = self.next;
        self.next = (self.next * 2).min(self.policy.max_backoff);
        delay
    }
}

/// Another process to wait for before the first start.
#[derive(Debug, Clone)]
pub struct StartAfter {
    pub name: &'static str,
    pub info: watch::Receiver<ProcessInfo>,
    /// Start anyway after this long.
    pub timeout: Duration,
}

/// A running supervisor. Dropping it stops the supervised process with no grace.
pub struct Supervisor {
    name: &'static str,
    /// `Some(grace)` asks the task to stop the process, waiting `grace` after SIGTERM.
    stop: watch::Sender<Option<Duration>>,
    task: JoinHandle<()>,
}

/// A fresh `ProcessInfo` in state `Pending`.
pub fn pending_info() -> ProcessInfo {
    ProcessInfo {
        state: ServiceState::Pending,
        pid: None,
        restarts: 0,
        last_error: None,
    }
}

impl Supervisor {
    /// Starts supervising on the current runtime, publishing the state on `info`.
    pub fn start(
        spec: Spec,
        policy: Policy,
        after: Option<StartAfter>,
        reaper: Reaper,
        info: Arc<watch::Sender<ProcessInfo>>,
    ) -> Supervisor {
        let (stop, stop_rx) = watch::channel(None);
        let name = spec.name;
        let task = tokio::spawn(supervise(spec, policy, after, reaper, info, stop_rx));
        Supervisor { name, stop, task }
    }

    /// Stops the process: SIGTERM, then SIGKILL after `grace`. No restart follows.
    pub async fn stop(self, grace: Duration) {
        let started = Instant::now();
        // The task owns the receiver until it ends; if it already ended there is
        // nothing to stop.
        let _ = self.stop.send(Some(grace));
        let limit = grace + KILL_WAIT + Duration::from_secs(1);
        match tokio::time::timeout(limit, self.task).await {
            Ok(_) => info!(
                name = self.name,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "stopped"
            ),
            Err(_) => warn!(name = self.name, "supervisor did not stop in {limit:?}"),
        }
    }
}

/// Waits until a stop is requested (or the handle is gone) and returns the grace.
async fn stop_requested(stop: &mut watch::Receiver<Option<Duration>>) -> Duration {
    loop {
        if let Some(grace) = *stop.borrow_and_update() {
            return grace;
        }
        if stop.changed().await.is_err() {
            return Duration::ZERO;
        }
    }
}

async fn supervise(
    spec: Spec,
    policy: Policy,
    after: Option<StartAfter>,
    reaper: Reaper,
    info: Arc<watch::Sender<ProcessInfo>>,
    mut stop: watch::Receiver<Option<Duration>>,
) {
    let name = spec.name;
    if let Some(mut after) = after {
        let waited = Instant::now();
        // A process that failed for good will not run: no point waiting for it.
        let settled = after
            .info
            .wait_for(|i| matches!(i.state, ServiceState::Running | ServiceState::Failed));
        tokio::select! {
            result = tokio::time::timeout(after.timeout, settled) => match result.map(|r| r.map(|i| i.state)) {
                Ok(Ok(ServiceState::Running)) => {
                    info!(name, waited_ms = waited.elapsed().as_millis() as u64, "{} is running", after.name)
                }
                Ok(Ok(_)) => warn!(name, "{} failed; starting anyway", after.name),
                _ => warn!(name, "{} is not running after {:?}; starting anyway", after.name, after.timeout),
            },
            _ = stop_requested(&mut stop) => {
                info.send_modify(|i| i.state = ServiceState::Stopped);
                return;
            }
        }
    }
    let mut backoff = Backoff::new(policy);
    let mut attempt: u32 = 0;
    loop {
        if stop.borrow().is_some() {
            info.send_modify(|i| i.state = ServiceState::Stopped);
            return;
        }
        if attempt > 0 {
            info.send_modify(|i| i.restarts += 1);
        }
        attempt += 1;
        let started = Instant::now();
        let mut process = match spawn(&spec, &reaper, attempt) {
            Ok(process) => process,
            Err(e) if e.is_not_found() => {
                warn!(name, error = %e, "cannot start: program not found; giving up");
                info.send_modify(|i| {
                    i.state = ServiceState::Failed;
                    i.pid = None;
                    i.last_error = Some(format!("{}: not found", spec.program));
                });
                return;
            }
            Err(e) => {
                let delay = backoff.delay_after(Duration::ZERO);
                warn!(name, error = %e, "cannot start; retrying in {delay:?}");
                info.send_modify(|i| {
                    i.state = ServiceState::Restarting;
                    i.pid = None;
                    i.last_error = Some(error_chain(&e));
                });
                tokio::select! {
                    _ = tokio::time::sleep(delay) => continue,
                    _ = stop_requested(&mut stop) => {
                        info.send_modify(|i| i.state = ServiceState::Stopped);
                        return;
                    }
                }
            }
        };
        let pid = process.pid();
        info!(name, pid, attempt, "started {}", spec.program);
        info.send_modify(|i| {
            i.state = ServiceState::Starting;
            i.pid = Some(pid);
        });

        let ready = wait_ready(&spec.readiness);
        tokio::pin!(ready);
        let mut is_ready = false;
        let exit = loop {
            tokio::select! {
                status = process.wait() => break Some(status),
                _ = &mut ready, if !is_ready => {
                    is_ready = true;
                    info!(name, pid, ready_ms = started.elapsed().as_millis() as u64, "running");
                    info.send_modify(|i| i.state = ServiceState::Running);
                }
                grace = stop_requested(&mut stop) => {
                    terminate(name, &mut process, grace).await;
                    break None;
                }
            }
        };
        let status = match exit {
            None => {
                info.send_modify(|i| {
                    i.state = ServiceState::Stopped;
                    i.pid = None;
                });
                return;
            }
            Some(Ok(status)) => status.to_string(),
            Some(Err(e)) => e.to_string(),
        };
        let uptime = started.elapsed();
        let delay = backoff.delay_after(uptime);
        let message = format!("{status} after {:.1} s", uptime.as_secs_f64());
        warn!(name, pid, "{message}; restarting in {delay:?}");
        info.send_modify(|i| {
            i.state = ServiceState::Restarting;
            i.pid = None;
            i.last_error = Some(message);
        });
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop_requested(&mut stop) => {
                info.send_modify(|i| i.state = ServiceState::Stopped);
                return;
            }
        }
    }
}

fn spawn(spec: &Spec, reaper: &Reaper, attempt: u32) -> Result<Process, reaper::ReaperError> {
    let mut command = reaper::command(&spec.program);
    command.args(&spec.args);
    if let Some(path) = &spec.log_path {
        let opened = OpenOptions::new().create(true).append(true).open(path);
        match opened.and_then(|mut file| {
            writeln!(
                file,
                "--- rmachine-agent: starting {} (attempt {attempt}) ---",
                spec.name
            )?;
            Ok((file.try_clone()?, file))
        }) {
            Ok((out, err)) => {
                command.stdout(Stdio::from(out)).stderr(Stdio::from(err));
            }
            Err(e) => {
                warn!(name = spec.name, path = %path.display(), error = %e, "cannot open log file; logging to the console")
            }
        }
    }
    reaper.spawn(&mut command)
}

/// SIGTERM, wait up to `grace`, then SIGKILL.
async fn terminate(name: &str, process: &mut Process, grace: Duration) {
    let started = Instant::now();
    process.signal(Signal::SIGTERM);
    match tokio::time::timeout(grace, process.wait()).await {
        Ok(status) => {
            let status = status
                .map(|s| s.to_string())
                .unwrap_or_else(|e| e.to_string());
            info!(
                name,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "{status} after SIGTERM"
            );
        }
        Err(_) => {
            warn!(
                name,
                "still running {grace:?} after SIGTERM; sending SIGKILL"
            );
            process.signal(Signal::SIGKILL);
            if tokio::time::timeout(KILL_WAIT, process.wait())
                .await
                .is_err()
            {
                warn!(
                    name,
                    pid = process.pid(),
                    "not reaped {KILL_WAIT:?} after SIGKILL"
                );
            }
        }
    }
}

async fn wait_ready(readiness: &Readiness) {
    match readiness {
        #[cfg(test)]
        Readiness::Started => {}
        Readiness::UnixSocket(socket) => {
            while UnixStream::connect(socket).await.is_err() {
                tokio::time::sleep(READY_POLL).await;
            }
        }
        Readiness::HttpOk { socket, path } => {
            while !http_ok(socket, path).await {
                tokio::time::sleep(READY_POLL).await;
            }
        }
    }
}

/// Whether `GET <path>` over the unix socket answers with status 200.
pub async fn http_ok(socket: &std::path::Path, path: &str) -> bool {
    let probe = async {
        let mut stream = UnixStream::connect(socket).await.ok()?;
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).await.ok()?;
        Some(head.starts_with(b"HTTP/1.") && &head[8..12] == b" 200")
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), probe).await,
        Ok(Some(true))
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reaper::tests::CHILDREN;

    const FAST: Policy = Policy {
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(80),
        reset_after: Duration::from_secs(60),
    };

    fn spec(program: &str, args: &[&str], readiness: Readiness) -> Spec {
        Spec {
            name: "test",
            program: program.into(),
            args: args.iter().map(|a| a.to_string()).collect(),
            log_path: None,
            readiness,
        }
    }

    #[test]
    fn test_backoff_doubles_caps_and_resets() {
        let mut b = Backoff::new(Policy::ENGINE);
        let secs = |d: Duration| d.as_secs();
        let short = Duration::from_secs(2);
        let delays: Vec<u64> = (0..7).map(|_| secs(b.delay_after(short))).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 30, 30]);
        assert_eq!(secs(b.delay_after(Duration::from_secs(60))), 1);
        assert_eq!(secs(b.delay_after(short)), 2);
    }

    #[tokio::test]
    async fn test_failing_child_is_restarted_with_backoff() {
        let _guard = CHILDREN.lock().await;
        let reaper = Reaper::start();
        let (tx, mut rx) = watch::channel(pending_info());
        let sup = Supervisor::start(
            spec("false", &[], Readiness::Started),
            FAST,
            None,
            reaper,
            Arc::new(tx),
        );
        let started = Instant::now();
        let info = tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|i| i.restarts >= 3))
            .await
            .unwrap()
            .unwrap()
            .clone();
        // Delays of 20 + 40 + 80 ms came before the third restart.
        assert!(
            started.elapsed() >= Duration::from_millis(140),
            "{:?}",
            started.elapsed()
        );
        assert!(
            info.last_error
                .as_deref()
                .unwrap_or("")
                .starts_with("exited with code 1 after"),
            "{info:?}"
        );
        sup.stop(Duration::from_secs(1)).await;
        assert_eq!(rx.borrow().state, ServiceState::Stopped);
    }

    #[tokio::test]
    async fn test_stop_terminates_a_running_child() {
        let _guard = CHILDREN.lock().await;
        let reaper = Reaper::start();
        let (tx, mut rx) = watch::channel(pending_info());
        let sup = Supervisor::start(
            spec("sleep", &["30"], Readiness::Started),
            FAST,
            None,
            reaper,
            Arc::new(tx),
        );
        let info = tokio::time::timeout(
            Duration::from_secs(10),
            rx.wait_for(|i| i.state == ServiceState::Running),
        )
        .await
        .unwrap()
        .unwrap()
        .clone();
        let pid = info.pid.unwrap();
        let started = Instant::now();
        sup.stop(Duration::from_secs(5)).await;
        // SIGTERM was enough: no wait for the grace period.
        assert!(started.elapsed() < Duration::from_secs(4));
        let info = rx.borrow().clone();
        assert_eq!(
            (info.state, info.pid, info.restarts),
            (ServiceState::Stopped, None, 0)
        );
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "child {pid} is still there"
        );
    }

    #[tokio::test]
    async fn test_stop_kills_a_child_that_ignores_sigterm() {
        let _guard = CHILDREN.lock().await;
        let reaper = Reaper::start();
        let (tx, mut rx) = watch::channel(pending_info());
        // The shell says when its trap is in place by creating a file.
        let dir = tempfile::tempdir().unwrap();
        let trapped = dir.path().join("trapped");
        let script = format!(
            "trap '' TERM; : > '{}'; while :; do sleep 0.05; done",
            trapped.display()
        );
        let sup = Supervisor::start(
            spec("sh", &["-c", &script], Readiness::Started),
            FAST,
            None,
            reaper,
            Arc::new(tx),
        );
        tokio::time::timeout(
            Duration::from_secs(10),
            rx.wait_for(|i| i.state == ServiceState::Running),
        )
        .await
        .unwrap()
        .unwrap();
        tokio::time::timeout(Duration::from_secs(10), async {
            while !trapped.exists() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the shell installs its trap");
        let started = Instant::now();
        sup.stop(Duration::from_millis(300)).await;
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert_eq!(rx.borrow().state, ServiceState::Stopped);
    }

    #[tokio::test]
    async fn test_missing_program_fails_without_retrying() {
        let _guard = CHILDREN.lock().await;
        let reaper = Reaper::start();
        let (tx, mut rx) = watch::channel(pending_info());
        let _sup = Supervisor::start(
            spec("/nonexistent/dockerd", &[], Readiness::Started),
            FAST,
            None,
            reaper,
            Arc::new(tx),
        );
        let info = tokio::time::timeout(
            Duration::from_secs(10),
            rx.wait_for(|i| i.state == ServiceState::Failed),
        )
        .await
        .unwrap()
        .unwrap()
        .clone();
        assert_eq!(info.restarts, 0);
        assert_eq!(
            info.last_error.as_deref(),
            Some("/nonexistent/dockerd: not found")
        );
    }

    #[tokio::test]
    async fn test_start_after_waits_for_the_other_process_and_readiness_probe() {
        let _guard = CHILDREN.lock().await;
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("engine.sock");
        let reaper = Reaper::start();
        let (first_tx, first_rx) = watch::channel(pending_info());
        let first_tx = Arc::new(first_tx);
        let (tx, mut rx) = watch::channel(pending_info());
        let after = StartAfter {
            name: "first",
            info: first_rx,
            timeout: Duration::from_secs(30),
        };
        let readiness = Readiness::HttpOk {
            socket: socket.clone(),
            path: "/_ping",
        };
        let sup = Supervisor::start(
            spec("sleep", &["30"], readiness),
            FAST,
            Some(after),
            reaper,
            Arc::new(tx),
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            rx.borrow().state,
            ServiceState::Pending,
            "started before the other process ran"
        );
        first_tx.send_modify(|i| i.state = ServiceState::Running);
        tokio::time::timeout(
            Duration::from_secs(10),
            rx.wait_for(|i| i.state == ServiceState::Starting),
        )
        .await
        .unwrap()
        .unwrap();
        // Starting until the socket answers 200.
        let listener = tokio::net::UnixListener::bind(&socket).unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOK")
                    .await;
            }
        });
        tokio::time::timeout(
            Duration::from_secs(10),
            rx.wait_for(|i| i.state == ServiceState::Running),
        )
        .await
        .unwrap()
        .unwrap();
        sup.stop(Duration::from_secs(5)).await;
    }

    #[tokio::test]
    async fn test_start_after_does_not_wait_for_a_failed_process() {
        let _guard = CHILDREN.lock().await;
        let reaper = Reaper::start();
        let (first_tx, first_rx) = watch::channel(pending_info());
        first_tx.send_modify(|i| i.state = ServiceState::Failed);
        let (tx, mut rx) = watch::channel(pending_info());
        let after = StartAfter {
            name: "first",
            info: first_rx,
            timeout: Duration::from_secs(30),
        };
        let sup = Supervisor::start(
            spec("sleep", &["30"], Readiness::Started),
            FAST,
            Some(after),
            reaper,
            Arc::new(tx),
        );
        tokio::time::timeout(
            Duration::from_secs(5),
            rx.wait_for(|i| i.state == ServiceState::Running),
        )
        .await
        .expect("waited for a failed process")
        .unwrap();
        sup.stop(Duration::from_secs(5)).await;
    }

    #[tokio::test]
    async fn test_http_ok_rejects_other_statuses() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("s.sock");
        let listener = tokio::net::UnixListener::bind(&socket).unwrap();
        tokio::spawn(async move {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            let _ = s
                .write_all(b"HTTP/1.1 500 Internal Server Error\r\n\r\n")
                .await;
        });
        assert!(!http_ok(&socket, "/_ping").await);
        assert!(!http_ok(&dir.path().join("missing.sock"), "/_ping").await);
    }
}
