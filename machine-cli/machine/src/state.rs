//! `state.json`: what the host agent reports about a machine, generated, never edited.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::guest_link::Carrier;
use crate::sys::process::ProcessId;

/// Version of the `state.json` format.
pub const STATE_VERSION: u32 = 2;

/// A machine's lifecycle state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", content = "reason", rename_all = "lowercase")]
pub enum State {
    Creating,
    Stopped,
    Starting,
    Running,
    Stopping,
    /// The VM is paused by something outside it, which the reason names with how it
    /// resumes (the host disk holding its data disk is full): the host agent runs and
    /// resumes it, nothing is lost meanwhile.
    Paused(String),
    /// Something failed; the reason says what (for a dead VM, the console's last lines).
    Error(String),
    /// The state cannot be known (an unreachable host).
    Unknown,
}

impl State {
    pub fn name(&self) -> &'static str {
        match self {
            State::Creating => "creating",
            State::Stopped => "stopped",
            State::Starting => "starting",
            State::Running => "running",
            State::Stopping => "stopping",
            State::Paused(_) => "paused",
            State::Error(_) => "error",
            State::Unknown => "unknown",
        }
    }

    /// Whether a host agent process should be alive in this state.
    pub fn has_hostagent(&self) -> bool {
        matches!(
            self,
            State::Starting | State::Running | State::Paused(_) | State::Stopping
        )
    }
}

/// A published port as the host agent reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedPort {
    pub proto: String,
    pub host_ip: String,
    pub host_port: u16,
    pub container: String,
    /// Set when the host port could not be opened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A helper daemon of the VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Helper {
    /// What stops working without it ("shared folder /home/me", "network").
    pub serves: String,
    pub id: ProcessId,
}

/// How a start got its VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StartKind {
    /// The VM was booted.
    Boot,
    /// A VM left running by a host agent that died was taken over.
    TakeOver,
    /// The VM `rmachine stop` saved was resumed (its processes kept running).
    Resume,
}

/// What the last `rmachine stop` did with the VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StopReport {
    /// The VM was saved: the next start resumes it.
    pub saved: bool,
    /// Why it was not saved (asked for a full shutdown, or it could not be).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The saved state's size, how long the guest took to flush its writes, and the save.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flush_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub save_ms: Option<u64>,
}

impl StopReport {
    /// A full shutdown, and why.
    pub fn shut_down(reason: impl Into<String>) -> StopReport {
        StopReport {
            saved: false,
            reason: Some(reason.into()),
            size_bytes: None,
            flush_ms: None,
            save_ms: None,
        }
    }
}

/// Whose clock measured a [`StartPhase`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PhaseClock {
    /// The host agent's.
    Host,
    /// The guest's boot clock, placed on the host's through the agent's uptime.
    Guest,
}

/// One finished step of a start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartPhase {
    pub name: String,
    /// Milliseconds since the host agent began the start.
    pub ms: u64,
    pub clock: PhaseClock,
}

impl StartPhase {
    pub fn host(name: &str, ms: u64) -> StartPhase {
        StartPhase {
            name: name.into(),
            ms,
            clock: PhaseClock::Host,
        }
    }
}

/// `state.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MachineState {
    pub version: u32,
    #[serde(flatten)]
    pub state: State,
    /// What the host agent is doing, for progress displays ("booting", "engine starting").
    #[serde(default)]
    pub detail: String,
    /// The host agent process (its PID and start time: a reused PID is never taken for it).
    #[serde(default)]
    pub hostagent: Option<ProcessId>,
    /// The VM process (rmachine-vmm or QEMU).
    #[serde(default)]
    pub vm: Option<ProcessId>,
    /// The VM's helper daemons (virtiofsd per shared folder, passt): they serve the VM and
    /// end with it; a start or stop after a crash finds them here.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub helpers: Vec<Helper>,
    /// The backend that runs the VM (`qemu`, `vmm`) and why it was chosen.
    pub backend: Option<String>,
    pub backend_reason: Option<String>,
    pub image: Option<String>,
    /// How to reach the guest this boot (holds the boot's token: the file is 0600).
    pub carrier: Option<Carrier>,
    pub started_at_unix: Option<u64>,
    /// Boot to agent ping and to engine ready, in milliseconds.
    pub ping_ms: Option<u64>,
    pub engine_ready_ms: Option<u64>,
    /// How the last start got its VM: a cold boot, or a running VM taken over from a
    /// host agent that died.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_kind: Option<StartKind>,
    /// The last start's steps, in milliseconds since the host agent began it: the host's
    /// own, and the guest agent's placed on the host's clock.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub start_phases: Vec<StartPhase>,
    /// A resume's time from its start to the VM running again (QEMU started, the saved
    /// state loaded), in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume_ms: Option<u64>,
    /// Why the last start booted cold although the machine had a saved state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cold_boot_reason: Option<String>,
    /// What the last stop did: saved the VM, or shut it down and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_stop: Option<StopReport>,
    #[serde(default)]
    pub ports: Vec<PublishedPort>,
    /// Problems of a running machine that do not stop it (a shared folder's server exited).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

impl MachineState {
    pub fn stopped() -> MachineState {
        MachineState {
            version: STATE_VERSION,
            state: State::Stopped,
            detail: String::new(),
            hostagent: None,
            vm: None,
            helpers: Vec::new(),
            backend: None,
            backend_reason: None,
            image: None,
            carrier: None,
            started_at_unix: None,
            ping_ms: None,
            engine_ready_ms: None,
            start_kind: None,
            start_phases: Vec::new(),
            resume_ms: None,
            cold_boot_reason: None,
            last_stop: None,
            ports: Vec::new(),
            warnings: Vec::new(),
        }
    }

    /// Reads `state.json`; a missing file is a stopped machine, a corrupt one an error
    /// state naming it (the file is regenerated at the next start).
    pub fn read(path: &Path) -> MachineState {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| MachineState {
                state: State::Error(format!(
                    "{} is corrupt ({e}); `rmachine start` regenerates it",
                    path.display()
                )),
                ..MachineState::stopped()
            }),
            Err(_) => MachineState::stopped(),
        }
    }

    /// The state of a machine that stopped, keeping what its last start and stop were
    /// (for `rmachine inspect` after the stop).
    pub fn stopped_after(&self, stop: Option<StopReport>) -> MachineState {
        let mut s = MachineState::stopped();
        s.image = self.image.clone();
        s.start_kind = self.start_kind;
        s.start_phases = self.start_phases.clone();
        s.resume_ms = self.resume_ms;
        s.cold_boot_reason = self.cold_boot_reason.clone();
        s.last_stop = stop;
        s
    }

    /// Whether the recorded VM process still runs.
    pub fn vm_alive(&self) -> bool {
        self.vm.is_some_and(|vm| vm.is_alive())
    }

    /// The state a start begins with: `Starting`, and, when the VM of `previous` still
    /// runs (its host agent died), what the new host agent needs to take it over: the VM,
    /// its helpers, how to reach its guest, its backend and image.
    pub fn starting_after(previous: &MachineState) -> MachineState {
        let mut s = MachineState::stopped();
        s.state = State::Starting;
        s.detail = "starting the host agent".into();
        if previous.vm_alive() && previous.carrier.is_some() {
            s.vm = previous.vm;
            s.helpers = previous.helpers.clone();
            s.carrier = previous.carrier.clone();
            s.backend = previous.backend.clone();
            s.backend_reason = previous.backend_reason.clone();
            s.image = previous.image.clone();
        }
        s
    }

    /// The state as JSON for people (`rmachine status --format json`, `inspect`): the
    /// boot's token is a secret, so it shows that there is one, not what it is.
    pub fn redacted(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).expect("state always serializes");
        if let Some(token) = v.pointer_mut("/carrier/token") {
            *token = serde_json::json!("(hidden)");
        }
        v
    }

    /// Writes `state.json` atomically, its owner's alone.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let bytes = serde_json::to_vec_pretty(self).expect("state always serializes");
        crate::store::write_atomic(path, &bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn test_state_round_trip_with_carrier() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let mut s = MachineState::stopped();
        s.state = State::Error("VM died".into());
        s.carrier = Some(Carrier::Tcp {
            ports: BTreeMap::from([(1024, "127.0.0.1:5000".parse().unwrap())]),
            token: "t".into(),
        });
        s.write(&path).unwrap();
        assert_eq!(MachineState::read(&path), s);
        assert_eq!(s.redacted()["carrier"]["token"], "(hidden)");
    }

    #[test]
    fn test_paused_round_trips_with_its_reason_and_keeps_the_host_agent() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let mut s = MachineState::stopped();
        s.state = State::Paused("the host disk is full".into());
        s.write(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(r#""state": "paused""#), "{text}");
        assert_eq!(MachineState::read(&path), s);
        assert_eq!(s.state.name(), "paused");
        assert!(s.state.has_hostagent());
    }

    #[test]
    fn test_missing_and_corrupt_state() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        assert_eq!(MachineState::read(&path).state, State::Stopped);
        std::fs::write(&path, "{ broken").unwrap();
        match MachineState::read(&path).state {
            State::Error(reason) => assert!(reason.contains("corrupt"), "{reason}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn test_a_start_keeps_only_a_running_vm() {
        let me = ProcessId::current();
        let mut crashed = MachineState::stopped();
        crashed.state = State::Error("the host agent exited".into());
        crashed.vm = Some(me);
        crashed.helpers = vec![Helper {
            serves: "network".into(),
            id: me,
        }];
        crashed.carrier = Some(Carrier::HybridVsock {
            uds: "/m/vsock.sock".into(),
        });
        let s = MachineState::starting_after(&crashed);
        assert_eq!(s.state, State::Starting);
        assert_eq!((s.vm, s.helpers.len()), (Some(me), 1));
        assert_eq!(s.carrier, crashed.carrier);

        // A VM that is gone (same PID, other start time) is not taken over.
        crashed.vm = Some(ProcessId {
            started: me.started + 1,
            ..me
        });
        let s = MachineState::starting_after(&crashed);
        assert_eq!((s.vm, s.helpers.len(), s.carrier), (None, 0, None));
    }

    #[cfg(unix)]
    #[test]
    fn test_state_file_is_its_owners_alone() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        MachineState::stopped().write(&path).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
}
