//! A driver without a VM, for tests of the CLI and the GUI: state changes are written to
//! `state.json` as a real host agent would.

use super::{Driver, DriverCaps, Endpoints, MachineError};
use crate::config::DriverKind;
use crate::state::{MachineState, State};
use crate::store::Machine;

pub struct FakeDriver;

impl FakeDriver {
    fn set(&self, machine: &Machine, state: State) -> Result<(), MachineError> {
        let mut s = machine.state.clone();
        s.state = state;
        s.hostagent = None;
        write(machine, &s)
    }
}

fn write(machine: &Machine, s: &MachineState) -> Result<(), MachineError> {
    let path = machine.files.state();
    s.write(&path).map_err(|source| MachineError::Io {
        what: "cannot write",
        path,
        source,
    })
}

impl Driver for FakeDriver {
    fn kind(&self) -> DriverKind {
        DriverKind::Fake
    }

    fn capabilities(&self) -> DriverCaps {
        DriverCaps {
            can_start_stop: true,
            local_vm: false,
            remote: false,
        }
    }

    fn create(&self, _machine: &Machine) -> Result<(), MachineError> {
        Ok(())
    }

    fn start(&self, machine: &Machine, progress: &mut dyn FnMut(&str)) -> Result<(), MachineError> {
        progress("starting (fake)");
        let mut s = MachineState::stopped();
        s.state = State::Running;
        s.backend = Some("fake".into());
        write(machine, &s)
    }

    fn stop(&self, machine: &Machine, _save: bool) -> Result<(), MachineError> {
        self.set(machine, State::Stopped)
    }

    fn kill(&self, machine: &Machine) -> Result<(), MachineError> {
        self.set(machine, State::Stopped)
    }

    fn remove(&self, _machine: &Machine) -> Result<(), MachineError> {
        Ok(())
    }

    fn state(&self, machine: &Machine) -> State {
        // No host agent process backs a fake machine: read the file as written.
        MachineState::read(&machine.files.state()).state
    }

    fn endpoints(&self, machine: &Machine) -> Result<Endpoints, MachineError> {
        Ok(Endpoints {
            docker_host: machine.files.docker_endpoint().docker_host(),
            ssh: None,
            engine_tls: None,
        })
    }
}
