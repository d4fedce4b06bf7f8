//! Saving and resuming a QEMU VM where QMP's unix socket is not available (Windows):
//! never saved, said so; the next start boots cold. Compiled, untested.

use std::time::Instant;

use rmachine_machine::driver::BackendChoice;
use rmachine_machine::guest_link::Carrier;
use rmachine_machine::saved_state::SavedHeader;
use rmachine_machine::state::StopReport;
use rmachine_machine::store::Machine;

use super::RunningVm;
use crate::SharedState;

const UNSUPPORTED: &str =
    "saving a machine is not available on this platform yet (it talks to QEMU over a unix socket)";

pub(crate) enum SaveOutcome {
    #[allow(dead_code)]
    Saved(StopReport),
    NotSaved(String),
    #[allow(dead_code)]
    Lost(String),
}

pub(crate) async fn save_qemu(
    _machine: &Machine,
    _vm: &mut RunningVm,
    _carrier: &Carrier,
    _image: &str,
) -> SaveOutcome {
    SaveOutcome::NotSaved(UNSUPPORTED.into())
}

pub(crate) struct Resumed {
    pub vm: RunningVm,
    pub started: Instant,
    pub loaded: Instant,
    pub running: Instant,
    pub size_bytes: u64,
}

pub(crate) async fn resume_qemu(
    _machine: &Machine,
    _choice: &BackendChoice,
    _state: &SharedState,
    _saved: &SavedHeader,
) -> anyhow::Result<Resumed> {
    anyhow::bail!("{UNSUPPORTED}")
}
