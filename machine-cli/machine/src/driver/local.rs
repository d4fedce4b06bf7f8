//! The local driver: the VM runs on this host under a host agent process
//! (`rmachine hostagent <name>`), which boots it with a [`Backend`] (rmachine-vmm or
//! QEMU), serves `docker.sock` and publishes ports. The CLI and the GUI only start the
//! host agent and talk to it over `hostagent.sock`.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{Driver, DriverCaps, Endpoints, MachineError};
use crate::accel::{self, Accel, AccelChoice};
use crate::config::DriverKind;
use crate::guest_link::ControlClient;
use crate::hostagent_api::{HostAgentReply, HostAgentRequest};
use crate::platform::{Arch, Platform};
use crate::state::{MachineState, State, StopReport};
use crate::store::{is_hostagent, Machine};
use crate::sys::local_socket;
use crate::sys::process::{self, ProcessId};
use rmachine_protocol::control::Request;

/// How long a start may take (software emulation is slow).
const START_TIMEOUT: Duration = Duration::from_secs(900);
/// How long a clean stop may take before the VM is killed: a save (the guest's flush and
/// its memory written out) or a shutdown.
const STOP_TIMEOUT: Duration = Duration::from_secs(180);

/// What runs the VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Vmm,
    Qemu,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Vmm => "vmm",
            Backend::Qemu => "qemu",
        }
    }
}

/// The backend chosen for a machine, with the reasons in words (`rmachine inspect`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BackendChoice {
    pub backend: Backend,
    pub accel: Accel,
    /// Why this backend (and accelerator).
    pub reason: String,
    /// Why this accelerator.
    pub accel_reason: String,
}

/// Chooses the backend for a guest of architecture `arch`: `vmm` only where it can boot
/// the guest (hardware KVM usable for Linux, a guest of the host's architecture and the
/// rmachine-vmm binary present), else `qemu` with the best accelerator for that guest.
pub fn choose_backend(kind: DriverKind, arch: Arch) -> BackendChoice {
    choose_backend_on(
        kind,
        arch,
        Platform::current(),
        accel::choose_for(arch),
        vmm_binary().is_some(),
    )
}

/// [`choose_backend`] with the host, its accelerator for the guest and whether
/// rmachine-vmm is installed given.
fn choose_backend_on(
    kind: DriverKind,
    arch: Arch,
    host: Platform,
    a: AccelChoice,
    vmm_installed: bool,
) -> BackendChoice {
    let qemu = |reason: String| BackendChoice {
        backend: Backend::Qemu,
        accel: a.accel,
        reason,
        accel_reason: a.reason.clone(),
    };
    match kind {
        DriverKind::Qemu => qemu(format!("--driver qemu; {}", a.reason)),
        DriverKind::Vmm => BackendChoice {
            backend: Backend::Vmm,
            accel: Accel::Kvm,
            reason: "--driver vmm".into(),
            accel_reason: "rmachine-vmm runs on hardware KVM".into(),
        },
        DriverKind::Auto | DriverKind::Fake | DriverKind::Ssh => {
            if arch != host.arch {
                qemu(format!(
                    "rmachine-vmm runs only {} guests; {}",
                    host.arch, a.reason
                ))
            } else if a.accel != Accel::Kvm {
                qemu(format!("rmachine-vmm needs hardware KVM: {}", a.reason))
            } else if !vmm_installed {
                qemu("rmachine-vmm is not installed beside rmachine".into())
            } else {
                BackendChoice {
                    backend: Backend::Vmm,
                    accel: Accel::Kvm,
                    reason: a.reason.clone(),
                    accel_reason: a.reason,
                }
            }
        }
    }
}

/// Refuses a guest architecture the driver cannot run: rmachine-vmm runs only guests of
/// the host's architecture (QEMU runs both, emulating the other).
pub fn check_arch(kind: DriverKind, arch: Arch) -> Result<(), MachineError> {
    check_arch_on(kind, arch, Platform::current())
}

fn check_arch_on(kind: DriverKind, arch: Arch, host: Platform) -> Result<(), MachineError> {
    if kind == DriverKind::Vmm && arch != host.arch {
        return Err(MachineError::UnsupportedArch {
            driver: kind.as_str(),
            arch,
            reason: format!(
                "rmachine-vmm runs only guests of the host's architecture ({}); use --driver qemu (or auto), which emulates {arch}",
                host.arch
            ),
        });
    }
    Ok(())
}

/// The rmachine-vmm binary beside this executable, or `RMACHINE_VMM`.
pub fn vmm_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("RMACHINE_VMM").map(PathBuf::from) {
        return p.is_file().then_some(p);
    }
    let exe = std::env::current_exe().ok()?;
    let p = exe
        .parent()?
        .join(format!("rmachine-vmm{}", std::env::consts::EXE_SUFFIX));
    p.is_file().then_some(p)
}

/// The `rmachine` binary that runs host agents: `RMACHINE_BIN`, this executable when it
/// is `rmachine`, else `rmachine` beside it (the desktop app).
fn rmachine_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("RMACHINE_BIN") {
        return PathBuf::from(p);
    }
    let name = format!("rmachine{}", std::env::consts::EXE_SUFFIX);
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from(&name));
    if exe.file_stem().is_some_and(|n| n == "rmachine") {
        return exe;
    }
    exe.parent()
        .map(|d| d.join(&name))
        .unwrap_or_else(|| PathBuf::from(&name))
}

pub struct LocalDriver {
    kind: DriverKind,
}

impl LocalDriver {
    pub fn new(kind: DriverKind) -> LocalDriver {
        LocalDriver { kind }
    }
}

/// How long the host agent may take to answer one request.
const HOSTAGENT_REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// Sends one request to a machine's host agent.
pub fn hostagent_call(
    machine: &Machine,
    request: &HostAgentRequest,
) -> Result<HostAgentReply, MachineError> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let err = |message: String| MachineError::HostAgent {
        name: machine.name.clone(),
        message,
    };
    let endpoint = machine.files.hostagent_endpoint();
    let mut line = serde_json::to_string(request).expect("request serializes");
    line.push('\n');
    let exchange = async {
        let mut stream = local_socket::connect(&endpoint)
            .await
            .map_err(|e| err(format!("cannot connect to {endpoint}: {e}")))?;
        stream
            .write_all(line.as_bytes())
            .await
            .map_err(|e| err(e.to_string()))?;
        let mut reply = String::new();
        BufReader::new(stream)
            .read_line(&mut reply)
            .await
            .map_err(|e| err(e.to_string()))?;
        Ok::<String, MachineError>(reply)
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| err(e.to_string()))?;
    let reply = rt.block_on(async {
        tokio::time::timeout(HOSTAGENT_REPLY_TIMEOUT, exchange)
            .await
            .map_err(|_| err(format!("no answer within {HOSTAGENT_REPLY_TIMEOUT:?}")))?
    })?;
    let reply: HostAgentReply =
        serde_json::from_str(&reply).map_err(|e| err(format!("bad reply: {e}")))?;
    match reply {
        HostAgentReply::Error { message } => Err(err(message)),
        other => Ok(other),
    }
}

fn tail(path: &std::path::Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Shuts down a VM whose host agent is gone through its guest link (the agent stops the
/// engine, syncs and powers off), waiting up to [`STOP_TIMEOUT`]. Whatever does not end
/// is left to the caller's kill.
fn shutdown_orphan(machine: &Machine) {
    let state = MachineState::read(&machine.files.state());
    let (Some(vm), Some(carrier)) = (state.vm.filter(|vm| vm.is_alive()), state.carrier) else {
        return;
    };
    tracing::info!(machine = %machine.name, "shutting down the VM its host agent left");
    // A clean shutdown is worth waiting for (the alternative kills the VM with the engine's
    // writes in flight): a guest starved of CPU (software emulation on a loaded host) may
    // miss one connection's handshake or answer, so the request is tried again while the
    // VM runs, for up to half the stop's time.
    let started = Instant::now();
    let asked = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
        .and_then(|rt| {
            rt.block_on(async {
                loop {
                    let attempt = async {
                        let mut c = ControlClient::connect(&carrier)
                            .await
                            .map_err(|e| e.to_string())?;
                        c.call(Request::Shutdown { reboot: false })
                            .await
                            .map_err(|e| e.to_string())
                    };
                    match attempt.await {
                        Ok(reply) => return Ok(reply),
                        Err(e) if started.elapsed() < STOP_TIMEOUT / 2 && vm.is_alive() => {
                            tracing::warn!(error = %e, "the guest did not take the shutdown request; asking again");
                            tokio::time::sleep(Duration::from_secs(2)).await;
                        }
                        Err(e) => return Err(e),
                    }
                }
            })
        });
    match asked {
        Ok(_) if vm.wait_gone(STOP_TIMEOUT) => {}
        Ok(_) => tracing::warn!("the VM did not power off within {STOP_TIMEOUT:?}; killing it"),
        Err(e) => {
            tracing::warn!(error = %e, "the guest did not take the shutdown request; killing the VM")
        }
    }
}

/// Starts the host agent of `machine` and waits until the machine runs (or fails);
/// `secret` (an ssh key's passphrase) is handed to it on its stdin, never stored.
pub(super) fn start_hostagent(
    machine: &Machine,
    progress: &mut dyn FnMut(&str),
    secret: Option<&str>,
) -> Result<(), MachineError> {
    if machine.state.state.has_hostagent() {
        return match &machine.state.state {
            State::Running => Ok(()),
            // The host agent resumes it by itself: the reason says when.
            State::Paused(reason) => Err(MachineError::StartFailed {
                name: machine.name.clone(),
                reason: format!("it is paused: {reason}"),
            }),
            _ => Err(MachineError::StartFailed {
                name: machine.name.clone(),
                reason: format!("it is {}", machine.state.state.name()),
            }),
        };
    }
    let log_path = machine.files.hostagent_log();
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|source| MachineError::Io {
            what: "cannot open",
            path: log_path.clone(),
            source,
        })?;
    let log2 = log.try_clone().map_err(|source| MachineError::Io {
        what: "cannot open",
        path: log_path.clone(),
        source,
    })?;
    // The starting state is written before the host agent runs, so a reader never
    // sees the stale state of the previous run; it keeps a VM whose host agent died,
    // which the new host agent takes over.
    let starting = MachineState::starting_after(&MachineState::read(&machine.files.state()));
    let state_path = machine.files.state();
    starting
        .write(&state_path)
        .map_err(|source| MachineError::Io {
            what: "cannot write",
            path: state_path.clone(),
            source,
        })?;
    let exe = rmachine_binary();
    let mut command = Command::new(&exe);
    process::detach(&mut command);
    let mut child = command
        .arg("hostagent")
        .arg(&machine.name)
        .stdin(if secret.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(log)
        .stderr(log2)
        .spawn()
        .map_err(|source| MachineError::SpawnHostAgent {
            exe: exe.display().to_string(),
            source,
        })?;
    if let (Some(secret), Some(mut stdin)) = (secret, child.stdin.take()) {
        use std::io::Write;
        let _ = writeln!(stdin, "{secret}");
    }
    let deadline = Instant::now() + START_TIMEOUT;
    let mut last_detail = String::new();
    loop {
        let s = MachineState::read(&state_path);
        if s.detail != last_detail && !s.detail.is_empty() {
            progress(&s.detail);
            last_detail = s.detail.clone();
        }
        match s.state {
            State::Running => return Ok(()),
            State::Error(reason) => {
                return Err(MachineError::StartFailed {
                    name: machine.name.clone(),
                    reason,
                });
            }
            _ => {}
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(MachineError::StartFailed {
                name: machine.name.clone(),
                reason: format!(
                    "the host agent exited ({status}); its log ends:\n{}",
                    tail(&log_path, 15)
                ),
            });
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return Err(MachineError::Timeout {
                name: machine.name.clone(),
                what: "start",
                timeout: START_TIMEOUT,
            });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl Driver for LocalDriver {
    fn kind(&self) -> DriverKind {
        self.kind
    }

    fn capabilities(&self) -> DriverCaps {
        DriverCaps {
            can_start_stop: true,
            local_vm: true,
            remote: false,
        }
    }

    fn create(&self, machine: &Machine) -> Result<(), MachineError> {
        check_arch(self.kind, machine.spec.arch)?;
        let path = machine.files.data_disk();
        let size = u64::from(machine.spec.disk_size_gib) << 30;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|source| MachineError::Io {
                what: "cannot create",
                path: path.clone(),
                source,
            })?;
        let current = file.metadata().map(|m| m.len()).unwrap_or(0);
        // Grow only: shrinking would cut the guest's file system.
        if current < size {
            file.set_len(size).map_err(|source| MachineError::Io {
                what: "cannot size",
                path,
                source,
            })?;
        }
        Ok(())
    }

    fn start(&self, machine: &Machine, progress: &mut dyn FnMut(&str)) -> Result<(), MachineError> {
        self.create(machine)?;
        start_hostagent(machine, progress, None)
    }

    fn stop(&self, machine: &Machine, save: bool) -> Result<(), MachineError> {
        let Some(hostagent) = machine
            .state
            .hostagent
            .filter(|id| is_hostagent(id, &machine.name))
        else {
            // No host agent: a VM it left running is shut down through its guest link,
            // then every recorded process is made sure of, and the stop recorded.
            shutdown_orphan(machine);
            return self.kill(machine);
        };
        match hostagent_call(machine, &HostAgentRequest::Stop { save }) {
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "host agent did not take the stop request; terminating it");
                hostagent.terminate();
            }
        }
        if hostagent.wait_gone(STOP_TIMEOUT) {
            return Ok(());
        }
        self.kill(machine)?;
        Err(MachineError::Timeout {
            name: machine.name.clone(),
            what: "stop cleanly (it was killed)",
            timeout: STOP_TIMEOUT,
        })
    }

    fn kill(&self, machine: &Machine) -> Result<(), MachineError> {
        let s = MachineState::read(&machine.files.state());
        if let Some(id) = s.hostagent.filter(|id| is_hostagent(id, &machine.name)) {
            id.kill();
        }
        // The recorded VM and helpers, only if each still is that process (PID and start
        // time: a reused PID is never signalled).
        if let Some(vm) = s.vm {
            vm.kill();
        }
        for helper in &s.helpers {
            helper.id.kill();
        }
        // passt exits once its VM is gone, but not one whose VM never connected; its pid file
        // names it (only if its command line names this machine's socket).
        let passt = std::fs::read_to_string(machine.files.passt_pid())
            .ok()
            .and_then(|p| p.trim().parse::<u32>().ok())
            .and_then(ProcessId::of);
        if let Some(id) = passt {
            let socket = machine.files.passt_socket().to_string_lossy().into_owned();
            if id.cmdline().is_some_and(|args| args.contains(&socket)) {
                id.kill();
            }
        }
        for endpoint in [
            machine.files.docker_endpoint(),
            machine.files.hostagent_endpoint(),
        ] {
            endpoint.remove_stale();
        }
        let stopped = s.stopped_after(Some(
            s.last_stop
                .clone()
                .filter(|_| s.state == State::Stopped)
                .unwrap_or_else(|| StopReport::shut_down("the VM was stopped at once")),
        ));
        let path = machine.files.state();
        stopped.write(&path).map_err(|source| MachineError::Io {
            what: "cannot write",
            path,
            source,
        })
    }

    fn remove(&self, _machine: &Machine) -> Result<(), MachineError> {
        Ok(())
    }

    fn state(&self, machine: &Machine) -> State {
        machine.state.state.clone()
    }

    fn endpoints(&self, machine: &Machine) -> Result<Endpoints, MachineError> {
        Ok(Endpoints {
            docker_host: machine.files.docker_endpoint().docker_host(),
            ssh: None,
            engine_tls: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_explicit_qemu_choice_says_why() {
        let c = choose_backend(DriverKind::Qemu, Arch::host());
        assert_eq!(c.backend, Backend::Qemu);
        assert!(c.reason.contains("--driver qemu"));
        assert!(!c.accel_reason.is_empty());
    }

    #[test]
    fn test_a_guest_of_another_arch_goes_to_qemu_and_vmm_refuses_it() {
        use crate::platform::HostOs;
        let host = Platform {
            os: HostOs::Linux,
            arch: Arch::Amd64,
        };
        let kvm = AccelChoice {
            accel: Accel::Kvm,
            reason: "/dev/kvm is usable".into(),
        };
        // The host's arch with KVM and rmachine-vmm: vmm.
        let c = choose_backend_on(DriverKind::Auto, Arch::Amd64, host, kvm.clone(), true);
        assert_eq!((c.backend, c.accel), (Backend::Vmm, Accel::Kvm));
        // arm64 on x86_64: qemu under TCG, whatever the host offers its own guests.
        let tcg = accel::for_guest(kvm.clone(), host, Arch::Arm64);
        let c = choose_backend_on(DriverKind::Auto, Arch::Arm64, host, tcg.clone(), true);
        assert_eq!((c.backend, c.accel), (Backend::Qemu, Accel::Tcg));
        assert!(
            c.reason.contains("rmachine-vmm runs only amd64 guests"),
            "{}",
            c.reason
        );
        assert!(
            c.accel_reason.contains("software emulation"),
            "{}",
            c.accel_reason
        );
        let c = choose_backend_on(DriverKind::Qemu, Arch::Arm64, host, tcg, true);
        assert_eq!((c.backend, c.accel), (Backend::Qemu, Accel::Tcg));
        // vmm is refused for another arch, with the way out; qemu and auto are not.
        let err = check_arch_on(DriverKind::Vmm, Arch::Arm64, host)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("vmm driver cannot run arm64 guests") && err.contains("--driver qemu"),
            "{err}"
        );
        check_arch_on(DriverKind::Vmm, Arch::Amd64, host).unwrap();
        check_arch_on(DriverKind::Qemu, Arch::Arm64, host).unwrap();
        check_arch_on(DriverKind::Auto, Arch::Arm64, host).unwrap();
    }

    #[test]
    fn test_auto_takes_vmm_only_with_hardware_kvm() {
        let c = choose_backend(DriverKind::Auto, Arch::host());
        if c.backend == Backend::Vmm {
            assert_eq!(c.accel, Accel::Kvm);
        } else {
            assert!(!c.reason.is_empty());
        }
    }
}
