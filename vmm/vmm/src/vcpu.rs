//! vCPU threads: each vCPU is created, configured and run on its own thread; pause and resume
//! go through [`VcpuControl`] and the vCPUs' kickers.

use std::sync::mpsc::Sender;
use std::sync::{Arc, Barrier, Condvar, Mutex};
use std::time::Duration;

use devices::bus::{lock, Bus};
use hypervisor::x86_64::VcpuState;
use hypervisor::{Vcpu, VcpuKicker, Vm, VmExit};

pub use crate::boot::BootSetup;
use crate::seccomp::{Filters, ThreadKind};

/// Why the VMM stops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmmExit {
    /// The guest reset the machine (i8042 0xFE, `reboot=k`, or a hypervisor reset event).
    GuestReset,
    /// The guest shut down (triple fault or power-off).
    GuestShutdown,
    /// The control API asked for an immediate stop.
    Poweroff,
    /// A vCPU failed.
    Error(String),
}

impl VmmExit {
    /// The process exit status: 0 for a guest-initiated or requested stop, 1 for a failure.
    pub fn exit_code(&self) -> i32 {
        match self {
            VmmExit::Error(_) => 1,
            _ => 0,
        }
    }
}

/// How the vCPUs start: booted, or from a snapshot's states (one per vCPU, in id order).
#[derive(Debug, Clone)]
pub enum VcpuStart {
    /// Booting a kernel.
    Boot(BootSetup),
    /// Restoring saved states.
    Restore(Vec<VcpuState>),
}

#[derive(Default)]
struct RunState {
    paused: bool,
    parked: usize,
    /// Incremented to ask the parked vCPUs to save their state.
    save_epoch: u64,
    /// Saved states by vCPU id.
    saved: Vec<(u8, Result<VcpuState, String>)>,
}

/// Pause/resume of all vCPUs.
#[derive(Default)]
pub struct VcpuControl {
    state: Mutex<RunState>,
    cv: Condvar,
    kickers: Mutex<Vec<Box<dyn VcpuKicker>>>,
}

impl VcpuControl {
    /// Stops every vCPU outside guest mode; returns once all are parked (or after 5 s).
    pub fn pause(&self) -> Result<(), String> {
        let count = {
            let mut state = lock(&self.state);
            state.paused = true;
            lock(&self.kickers).len()
        };
        for k in lock(&self.kickers).iter() {
            k.kick();
        }
        let state = lock(&self.state);
        let (state, timeout) = self
            .cv
            .wait_timeout_while(state, Duration::from_secs(5), |s| s.parked < count)
            .unwrap_or_else(|p| p.into_inner());
        if timeout.timed_out() {
            return Err(format!("only {} of {count} vcpus paused", state.parked));
        }
        Ok(())
    }

    /// Saves every vCPU's state; the VM must be paused (by [`VcpuControl::pause`]). Each
    /// parked vCPU thread saves its own vCPU (a vCPU is used on its thread only).
    pub fn save_vcpus(&self, count: usize) -> Result<Vec<VcpuState>, String> {
        let mut state = lock(&self.state);
        if !state.paused || state.parked < count {
            return Err("the vcpus are not paused".into());
        }
        state.saved.clear();
        state.save_epoch += 1;
        self.cv.notify_all();
        let (mut state, timeout) = self
            .cv
            .wait_timeout_while(state, Duration::from_secs(10), |s| s.saved.len() < count)
            .unwrap_or_else(|p| p.into_inner());
        if timeout.timed_out() {
            return Err(format!(
                "only {} of {count} vcpus saved their state",
                state.saved.len()
            ));
        }
        let mut saved = std::mem::take(&mut state.saved);
        saved.sort_by_key(|(id, _)| *id);
        saved
            .into_iter()
            .map(|(id, r)| r.map_err(|e| format!("vcpu {id}: {e}")))
            .collect()
    }

    /// Lets paused vCPUs run again.
    pub fn resume(&self) {
        lock(&self.state).paused = false;
        self.cv.notify_all();
    }

    /// Whether the VM is paused.
    pub fn is_paused(&self) -> bool {
        lock(&self.state).paused
    }

    /// Parks the vCPU while the VM is paused, saving its state when asked. Called only after
    /// a `run` returned `Interrupted`: KVM then finished any I/O the guest had started (the
    /// kick's `immediate_exit` makes `KVM_RUN` complete pending port and MMIO reads before it
    /// returns), so the saved state is consistent.
    fn park_if_paused(&self, vcpu: &dyn Vcpu, id: u8) {
        let mut state = lock(&self.state);
        if !state.paused {
            return;
        }
        state.parked += 1;
        let mut served = state.save_epoch;
        self.cv.notify_all();
        while state.paused {
            if state.save_epoch != served {
                served = state.save_epoch;
                let saved = vcpu.save_state().map_err(|e| error_chain(&e));
                state.saved.push((id, saved));
                self.cv.notify_all();
                continue;
            }
            state = self.cv.wait(state).unwrap_or_else(|p| p.into_inner());
        }
        state.parked -= 1;
    }
}

/// Spawns one thread per vCPU; they start running once all are configured and the VM is
/// complete ([`Vm::vcpus_created`]). Each installs the vCPU seccomp filter of `filters` then,
/// before it runs.
pub fn spawn_vcpus(
    vm: Arc<dyn Vm>,
    start: VcpuStart,
    pio: Arc<Bus>,
    mmio: Arc<Bus>,
    control: Arc<VcpuControl>,
    exit: Sender<VmmExit>,
    filters: Arc<Filters>,
) -> std::io::Result<()> {
    let count = match &start {
        VcpuStart::Boot(boot) => boot.vcpu_count,
        VcpuStart::Restore(states) => states.len() as u8,
    };
    let barrier = Arc::new(Barrier::new(usize::from(count)));
    for id in 0..count {
        let (vm, start, pio, mmio, control, exit, barrier, filters) = (
            vm.clone(),
            start.clone(),
            pio.clone(),
            mmio.clone(),
            control.clone(),
            exit.clone(),
            barrier.clone(),
            filters.clone(),
        );
        std::thread::Builder::new()
            .name(format!("vcpu{id}"))
            .spawn(move || {
                // Creation and configuration ioctls, and the VM's completion once every vCPU
                // exists, come before the filter, which allows KVM_RUN and what the guest's
                // exits lead to.
                let mut vcpu = match create_vcpu(vm.as_ref(), id, &start) {
                    Ok(v) => Some(v),
                    Err(e) => {
                        let _ = exit.send(VmmExit::Error(e));
                        None
                    }
                };
                if barrier.wait().is_leader() {
                    if let Err(e) = vm.vcpus_created() {
                        let _ = exit.send(VmmExit::Error(error_chain(&e)));
                    }
                }
                barrier.wait();
                if vcpu.is_some() {
                    if let Err(e) = filters.apply(ThreadKind::Vcpu) {
                        let _ = exit.send(VmmExit::Error(error_chain(&e)));
                        vcpu = None;
                    }
                }
                if let Some(vcpu) = &vcpu {
                    lock(&control.kickers).push(vcpu.kicker());
                }
                barrier.wait();
                if let Some(vcpu) = vcpu {
                    let reason = run_vcpu(vcpu, id, &pio, &mmio, &control);
                    let _ = exit.send(reason);
                }
            })?;
    }
    Ok(())
}

fn create_vcpu(vm: &dyn Vm, id: u8, start: &VcpuStart) -> Result<Box<dyn Vcpu>, String> {
    let vcpu = vm
        .create_vcpu(id)
        .map_err(|e| format!("cannot create vcpu {id}: {e}"))?;
    let boot = match start {
        VcpuStart::Boot(boot) => boot,
        VcpuStart::Restore(states) => {
            let state = states
                .get(usize::from(id))
                .ok_or_else(|| format!("no saved state for vcpu {id}"))?;
            vcpu.restore_state(state)
                .map_err(|e| format!("cannot restore vcpu {id}: {}", error_chain(&e)))?;
            return Ok(vcpu);
        }
    };
    crate::boot::setup_vcpu(vcpu.as_ref(), id, boot)?;
    Ok(vcpu)
}

/// `e` and its sources, joined by `: `.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}

/// Runs a vCPU until the VM stops; returns why.
fn run_vcpu(
    mut vcpu: Box<dyn Vcpu>,
    id: u8,
    pio: &Bus,
    mmio: &Bus,
    control: &VcpuControl,
) -> VmmExit {
    tracing::debug!(vcpu = id, "vcpu running");
    loop {
        match vcpu.run() {
            Ok(VmExit::IoIn { port, data }) => {
                if !pio.read(u64::from(port), data) {
                    tracing::trace!(port, "read from an unhandled port");
                    data.fill(0xff);
                }
            }
            Ok(VmExit::IoOut { port, data }) => {
                if !pio.write(u64::from(port), data) {
                    tracing::trace!(port, "write to an unhandled port");
                }
            }
            Ok(VmExit::MmioRead { addr, data }) => {
                if !mmio.read(addr, data) {
                    devices::warn_guest!(vcpu = id, addr, "read from unmapped guest address");
                    data.fill(0xff);
                }
            }
            Ok(VmExit::MmioWrite { addr, data }) => {
                if !mmio.write(addr, data) {
                    devices::warn_guest!(vcpu = id, addr, "write to unmapped guest address");
                }
            }
            Ok(VmExit::Interrupted) => control.park_if_paused(vcpu.as_ref(), id),
            Ok(VmExit::Halt) => {
                tracing::info!(vcpu = id, "vcpu halted");
                // Nothing will wake it: park until the VMM exits.
                loop {
                    std::thread::park();
                }
            }
            Ok(VmExit::Shutdown) => {
                tracing::info!(vcpu = id, "guest shut down (triple fault or power off)");
                return VmmExit::GuestShutdown;
            }
            Ok(VmExit::Reset) => {
                tracing::info!(vcpu = id, "guest requested a reset");
                return VmmExit::GuestReset;
            }
            Ok(VmExit::Unhandled(what)) => {
                tracing::error!(vcpu = id, exit = %what, "unhandled vcpu exit");
                return VmmExit::Error(format!("vcpu {id}: unhandled exit {what}"));
            }
            Err(e) => {
                tracing::error!(vcpu = id, error = %e, "vcpu run failed");
                return VmmExit::Error(format!("vcpu {id}: {}", error_chain(&e)));
            }
        }
    }
}
