//! KVM integration test of virtio-net against a real passt (the bundle `rmachine setup`
//! installs): the test guest asks passt's ARP responder for the gateway and its DHCP server
//! for an address, and the host checks what passt answered.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use support::*;

/// passt's own MAC address on the guest's link (`--mac-addr`).
const PASST_MAC: &str = "02:50:41:53:53:54";

/// A passt serving one VMM on `socket`, killed on drop.
struct Passt {
    child: Child,
    log: PathBuf,
}

impl Passt {
    /// Starts passt in the foreground for one client, with the addresses the host agent gives
    /// machines, and waits until it is ready (its pid file is written once initialisation is
    /// done, after the socket listens). `None` if there is no passt (after printing why;
    /// panics instead when `REQUIRE_KVM=1`, as CI installs it).
    fn start(dir: &Path, socket: &Path) -> Option<Self> {
        let mut cmd = require_tool(&PASST)?.command(None);
        let pid_file = dir.join("passt.pid");
        let log = dir.join("passt.log");
        // As root, passt switches to nobody by itself once its socket, pid file and log
        // are open, so they may live in this private folder.
        let child = cmd
            .args(["--foreground", "--one-off", "--quiet", "--socket"])
            .arg(socket)
            .arg("--pid")
            .arg(&pid_file)
            .args([
                "--address",
                "10.0.2.15",
                "--netmask",
                "24",
                "--gateway",
                "10.0.2.2",
            ])
            .args(["--map-host-loopback", "10.0.2.2", "--mac-addr", PASST_MAC])
            .args(["--dns", "10.0.2.3", "--search", "none"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start passt");
        let mut passt = Passt { child, log };
        let start = Instant::now();
        while std::fs::metadata(&pid_file).map_or(true, |m| m.len() == 0) {
            if let Ok(Some(status)) = passt.child.try_wait() {
                panic!("passt exited ({status}):\n{}", passt.log());
            }
            assert!(
                start.elapsed() < TIMEOUT,
                "passt never wrote its pid file:\n{}",
                passt.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        Some(passt)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for passt to exit (it does once its one client, the VMM, is gone).
    fn wait_exit(&mut self) -> std::process::ExitStatus {
        let start = Instant::now();
        while start.elapsed() < TIMEOUT {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("passt did not exit after the VMM:\n{}", self.log());
    }
}

impl Drop for Passt {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn test_net_guest_gets_arp_and_dhcp_answers_from_real_passt() {
    if !require_kvm() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let guest = build_guest(dir.path());
    let socket = dir.path().join("passt.sock");
    let Some(mut passt) = Passt::start(dir.path(), &socket) else {
        return;
    };
    let mut vmm = VmmProcess::start(
        dir.path(),
        &json!({
            "memory_mib": 64,
            "kernel": {"path": guest, "cmdline": "console=ttyS0 reboot=k rmtest.net=passt"},
            "serial": {"log_path": dir.path().join("console.log")},
            "net": {"backend": "passt", "socket": socket, "mac": "52:54:00:12:34:56"},
        }),
    );
    let status = vmm.wait_exit();
    let console = vmm.console();
    println!("{console}");
    assert!(
        status.success(),
        "exit {status}\n{console}\n{}\npasst:\n{}",
        vmm.log(),
        passt.log()
    );
    for line in [
        "rmguest: net mac 52:54:00:12:34:56",
        // passt's ARP responder: the gateway is at passt's own MAC, answered to the guest's.
        &format!("rmguest: net passt arp reply 10.0.2.2 is-at {PASST_MAC} to 52:54:00:12:34:56"),
        // passt's DHCP server offers the configured address, mask and router.
        "rmguest: net passt dhcp offer 10.0.2.15 mask 255.255.255.0 router 10.0.2.2 server 10.0.2.2",
        "rmguest: net passt ok",
        "rmguest: all ok",
    ] {
        assert!(
            console.contains(line),
            "missing {line:?} in\n{console}\npasst:\n{}",
            passt.log()
        );
    }
    let passt_status = passt.wait_exit();
    assert!(
        passt_status.success(),
        "passt exited {passt_status}:\n{}",
        passt.log()
    );
}
