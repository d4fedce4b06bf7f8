//! The agent's shared view of the guest: what `info` reports and what the engine service
//! checks before splicing.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use rmachine_protocol::control::{BootPhase, GuestInfo, ProcessInfo, MAX_BOOT_PHASES};
use rmachine_protocol::{AGENT_VERSION, PROTOCOL_VERSION};
use tokio::sync::watch;
use tracing::debug;

use crate::supervisor::pending_info;
use crate::sysinfo;

/// Guest state shared by the boot sequence, the supervisors and the services.
pub struct Status {
    pub hostname: String,
    data_disk_mounted: AtomicBool,
    ip: Mutex<Option<String>>,
    pub containerd: Arc<watch::Sender<ProcessInfo>>,
    pub dockerd: Arc<watch::Sender<ProcessInfo>>,
    /// This boot's finished steps on the boot clock, in the order they finished.
    phases: Mutex<Vec<BootPhase>>,
}

impl Status {
    pub fn new(hostname: &str) -> Status {
        Status {
            hostname: hostname.to_string(),
            data_disk_mounted: AtomicBool::new(false),
            ip: Mutex::new(None),
            containerd: Arc::new(watch::channel(pending_info()).0),
            dockerd: Arc::new(watch::channel(pending_info()).0),
            phases: Mutex::new(Vec::new()),
        }
    }

    /// Records that a step of the boot finished now.
    pub fn phase(&self, name: &str) {
        self.phase_at(name, sysinfo::boot_clock_ms());
    }

    /// Records that a step of the boot finished at `ms` on the boot clock.
    pub fn phase_at(&self, name: &str, ms: u64) {
        let mut phases = self.phases.lock().unwrap_or_else(PoisonError::into_inner);
        if phases.len() < MAX_BOOT_PHASES {
            phases.push(BootPhase {
                name: name.to_string(),
                ms,
            });
        }
    }

    pub fn set_data_disk_mounted(&self, mounted: bool) {
        self.data_disk_mounted.store(mounted, Ordering::Relaxed);
    }

    pub fn data_disk_mounted(&self) -> bool {
        self.data_disk_mounted.load(Ordering::Relaxed)
    }

    pub fn set_ip(&self, ip: Option<String>) {
        *self.ip.lock().unwrap_or_else(PoisonError::into_inner) = ip;
    }

    pub fn ip(&self) -> Option<String> {
        self.ip
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The `info` reply. Facts the kernel does not give are reported as zero.
    pub fn guest_info(&self) -> GuestInfo {
        let uptime_s = sysinfo::uptime_s(Path::new("/proc/uptime")).unwrap_or_else(|e| {
            debug!(error = %e, "no uptime");
            0.0
        });
        let (mem_total_kib, mem_available_kib) = sysinfo::meminfo_kib(Path::new("/proc/meminfo"))
            .unwrap_or_else(|e| {
                debug!(error = %e, "no meminfo");
                (0, 0)
            });
        GuestInfo {
            agent: AGENT_VERSION.to_string(),
            protocol: PROTOCOL_VERSION,
            kernel: sysinfo::kernel_release(),
            hostname: self.hostname.clone(),
            uptime_s,
            mem_total_kib,
            mem_available_kib,
            cpus: sysinfo::cpus(),
            ip: self.ip(),
            data_disk_mounted: self.data_disk_mounted(),
            containerd: self.containerd.borrow().clone(),
            dockerd: self.dockerd.borrow().clone(),
            boot_phases: self
                .phases
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rmachine_protocol::control::ServiceState;

    #[test]
    fn test_guest_info_reflects_the_status() {
        let status = Status::new("box");
        status.set_ip(Some("10.0.2.15".into()));
        status.set_data_disk_mounted(true);
        status.dockerd.send_modify(|i| {
            i.state = ServiceState::Running;
            i.pid = Some(42);
        });
        let info = status.guest_info();
        assert_eq!(info.hostname, "box");
        assert_eq!(info.ip.as_deref(), Some("10.0.2.15"));
        assert!(info.data_disk_mounted);
        assert_eq!(
            (info.dockerd.state, info.dockerd.pid),
            (ServiceState::Running, Some(42))
        );
        assert_eq!(info.containerd.state, ServiceState::Pending);
        assert!(info.mem_total_kib > 0 && info.uptime_s > 0.0);
        assert_eq!(info.protocol, PROTOCOL_VERSION);
        assert!(info.boot_phases.is_empty());
    }

    #[test]
    fn test_phases_are_reported_in_order_and_bounded() {
        let status = Status::new("box");
        status.phase_at("agent started", 700);
        status.phase("config read");
        let phases = status.guest_info().boot_phases;
        assert_eq!(phases[0].name, "agent started");
        assert_eq!(phases[0].ms, 700);
        assert_eq!(phases[1].name, "config read");
        assert!(phases[1].ms > 0);
        for i in 0..100 {
            status.phase(&format!("step {i}"));
        }
        assert_eq!(status.guest_info().boot_phases.len(), MAX_BOOT_PHASES);
    }
}
