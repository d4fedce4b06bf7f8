//! KVM integration tests: the test guest boots through the same loader path as Linux and
//! drives every device; the host side checks files, sockets and the exit status.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::{UnixListener, UnixStream};

use serde_json::json;
use support::*;

#[test]
fn test_guest_boots_64bit_and_drives_block_rng_then_resets() {
    if !require_kvm() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let guest = build_guest(dir.path());
    let disk = dir.path().join("data.img");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let ro = dir.path().join("root.img");
    std::fs::write(&ro, vec![0x11u8; 4096]).unwrap();
    let mut vmm = VmmProcess::start(
        dir.path(),
        &json!({
            "vcpus": 2,
            "memory_mib": 128,
            "kernel": {"path": guest, "cmdline": "console=ttyS0 reboot=k panic=1"},
            "serial": {"log_path": dir.path().join("console.log")},
            "disks": [
                {"id": "data", "path": disk},
                {"id": "root", "path": ro, "read_only": true}
            ],
            "rng": {}
        }),
    );
    let status = vmm.wait_exit();
    let console = vmm.console();
    assert!(status.success(), "exit {status}\n{console}\n{}", vmm.log());
    for line in [
        "rmguest: long mode ok",
        "rmguest: cmdline: console=ttyS0 reboot=k panic=1 virtio_mmio.device=4K@0xd0000000:5 virtio_mmio.device=4K@0xd0001000:6 virtio_mmio.device=4K@0xd0002000:7",
        "rmguest: e820 entries 2",
        "rmguest: mp cpus 2",
        "rmguest: blk data capacity 131072",
        "rmguest: blk rw ok",
        "rmguest: blk root capacity 8 read-only",
        "rmguest: blk ro ok",
        "rmguest: rng ok 64",
        "rmguest: all ok",
    ] {
        assert!(console.contains(line), "missing {line:?} in\n{console}");
    }
    assert!(
        vmm.log()
            .contains("guest reset the machine; vmm exiting with status 0"),
        "{}",
        vmm.log()
    );
    // The host sees what the guest wrote at sector 2, and the image stays sparse.
    let content = std::fs::read(&disk).unwrap();
    for (i, b) in content[1024..1024 + 4096].iter().enumerate() {
        assert_eq!(*b, (i as u32 * 7 + 3) as u8, "byte {i}");
    }
    assert!(content[..1024].iter().all(|&b| b == 0));
    let meta = std::fs::metadata(&disk).unwrap();
    assert_eq!(meta.len(), 64 << 20);
    assert!(
        meta.blocks() * 512 < 1 << 20,
        "image not sparse: {} blocks",
        meta.blocks()
    );
    assert_eq!(std::fs::read(&ro).unwrap(), vec![0x11u8; 4096]);
}

#[test]
fn test_vsock_echo_both_directions_through_hybrid_socket() {
    if !require_kvm() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let guest = build_guest(dir.path());
    let uds = dir.path().join("vsock.sock");
    // Guest -> host: the guest connects to CID 2 port 5000, i.e. <uds>_5000.
    let listener = UnixListener::bind(format!("{}_5000", uds.display())).unwrap();
    let echo = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(TIMEOUT)).unwrap();
        let mut buf = [0u8; 15];
        s.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"ping-from-guest");
        s.write_all(b"pong-from-host").unwrap();
        // Keep the stream open until the guest shuts down its side.
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
    });
    let mut vmm = VmmProcess::start(
        dir.path(),
        &json!({
            "memory_mib": 64,
            "kernel": {"path": guest, "cmdline": "console=ttyS0 reboot=k rmtest.g2h=5000 rmtest.h2g=6000"},
            "serial": {"log_path": dir.path().join("console.log")},
            "vsock": {"guest_cid": 42, "uds_path": uds},
        }),
    );
    vmm.wait_for_console("rmguest: vsock cid 42");
    vmm.wait_for_console("rmguest: vsock g2h ok");
    echo.join().unwrap();
    // Host -> guest through CONNECT.
    vmm.wait_for_console("rmguest: vsock listening 6000");
    let mut s = UnixStream::connect(&uds).unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    s.write_all(b"CONNECT 6000\n").unwrap();
    let mut reader = BufReader::new(s.try_clone().unwrap());
    let mut ok = String::new();
    if let Err(e) = reader.read_line(&mut ok) {
        panic!(
            "no OK line: {e}\nconsole:\n{}\nlog:\n{}",
            vmm.console(),
            vmm.log()
        );
    }
    assert!(ok.starts_with("OK ") && ok.ends_with('\n'), "{ok:?}");
    let host_port: u32 = ok[3..].trim().parse().unwrap();
    assert!(host_port >= 1 << 30);
    s.write_all(b"hello-guest").unwrap();
    let mut echo = [0u8; 11];
    if let Err(e) = reader.read_exact(&mut echo) {
        panic!(
            "no echo: {e}\nconsole:\n{}\nlog:\n{}",
            vmm.console(),
            vmm.log()
        );
    }
    assert_eq!(&echo, b"hello-guest");
    drop(reader);
    drop(s);
    vmm.wait_for_console("rmguest: vsock h2g ok");
    let status = vmm.wait_exit();
    assert!(status.success(), "exit {status}\n{}", vmm.log());
    assert!(
        vmm.console().contains("rmguest: all ok"),
        "{}",
        vmm.console()
    );
}

#[test]
fn test_api_describe_pause_resume_metrics_poweroff() {
    if !require_kvm() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let guest = build_guest(dir.path());
    let api = dir.path().join("vmm.sock");
    let disk = dir.path().join("d.img");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    // The guest waits for a host connection on port 7000 that never comes: it stays running.
    let mut vmm = VmmProcess::start(
        dir.path(),
        &json!({
            "kernel": {"path": guest, "cmdline": "console=ttyS0 reboot=k rmtest.h2g=7000"},
            "memory_mib": 64,
            "serial": {"log_path": dir.path().join("console.log")},
            "disks": [{"id": "d", "path": disk}],
            "vsock": {"guest_cid": 3, "uds_path": dir.path().join("v.sock")},
            "api_socket": api,
        }),
    );
    vmm.wait_for_console("rmguest: vsock listening 7000");
    wait_for_path(&api);
    let (status, body) = http(&api, "GET", "/vm");
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["state"], "running");
    assert_eq!(v["devices"][0]["id"], "d");
    assert_eq!(v["devices"][1]["kind"], "vsock");
    assert_eq!(http(&api, "PUT", "/vm/pause").0, 204);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&http(&api, "GET", "/vm").1).unwrap()["state"],
        "paused"
    );
    assert_eq!(http(&api, "PUT", "/vm/resume").0, 204);
    let (status, body) = http(&api, "GET", "/metrics");
    assert_eq!(status, 200);
    let m: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(m["devices"]["d"]["device"]["write_count"], 1);
    assert_eq!(m["devices"]["d"]["device"]["read_count"], 1);
    assert_eq!(m["devices"]["vsock"]["device"]["malformed_packets"], 0);
    assert_eq!(http(&api, "GET", "/nope").0, 404);
    assert_eq!(http(&api, "PUT", "/vm/poweroff").0, 202);
    let status = vmm.wait_exit();
    assert!(status.success(), "exit {status}");
    assert!(
        vmm.log().contains("powered off through the api"),
        "{}",
        vmm.log()
    );
}

#[test]
fn test_api_shutdown_sends_ctrl_alt_del() {
    if !require_kvm() {
        return;
    }
    // The test guest has no keyboard driver: check that the i8042 raised the scancodes by
    // reading the status port is out of scope; here the API accepts the request and the VMM
    // keeps running until powered off.
    let dir = tempfile::tempdir().unwrap();
    let guest = build_guest(dir.path());
    let api = dir.path().join("vmm.sock");
    let mut vmm = VmmProcess::start(
        dir.path(),
        &json!({
            "kernel": {"path": guest, "cmdline": "console=ttyS0 rmtest.h2g=7000"},
            "memory_mib": 32,
            "serial": {"log_path": dir.path().join("console.log")},
            "vsock": {"guest_cid": 3, "uds_path": dir.path().join("v.sock")},
            "api_socket": api,
        }),
    );
    vmm.wait_for_console("rmguest: vsock listening 7000");
    wait_for_path(&api);
    assert_eq!(http(&api, "PUT", "/vm/shutdown").0, 202);
    assert!(
        vmm.log().contains("graceful shutdown requested"),
        "{}",
        vmm.log()
    );
    assert_eq!(http(&api, "PUT", "/vm/poweroff").0, 202);
    assert!(vmm.wait_exit().success());
}

/// Every thread of the VMM runs under a seccomp filter (the kernel's view of each task), and
/// none with `--no-seccomp`.
#[test]
fn test_every_vmm_thread_runs_under_a_seccomp_filter() {
    if !require_kvm() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let guest = build_guest(dir.path());
    let api = dir.path().join("vmm.sock");
    let config = json!({
        "vcpus": 2,
        "kernel": {"path": guest, "cmdline": "console=ttyS0 rmtest.h2g=7000"},
        "memory_mib": 32,
        "serial": {"log_path": dir.path().join("console.log")},
        "vsock": {"guest_cid": 3, "uds_path": dir.path().join("v.sock")},
        "api_socket": api,
    });
    /// (thread name, seccomp mode) of every task of `pid`.
    fn tasks(pid: u32) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for task in std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .flatten()
        {
            let status = std::fs::read_to_string(task.path().join("status")).unwrap();
            let field = |name: &str| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(name))
                    .map(|v| v.trim().to_string())
                    .unwrap_or_default()
            };
            out.push((field("Name:"), field("Seccomp:")));
        }
        out.sort();
        out
    }
    for (flags, mode) in [(&[][..], "2"), (&["--no-seccomp"][..], "0")] {
        let mut vmm = VmmProcess::start_with_args(dir.path(), &config, flags);
        vmm.wait_for_console("rmguest: vsock listening 7000");
        wait_for_path(&api);
        let tasks = tasks(vmm.child.id());
        // KVM's own workers (kvm-nx-lpage-recovery) are tasks of the process too.
        let names: Vec<&str> = tasks
            .iter()
            .map(|(n, _)| n.as_str())
            .filter(|n| !n.starts_with("kvm-"))
            .collect();
        assert_eq!(
            names,
            ["api", "devices", "rmachine-vmm", "vcpu0", "vcpu1"],
            "{tasks:?}"
        );
        assert!(tasks.iter().all(|(_, m)| m == mode), "{flags:?}: {tasks:?}");
        assert_eq!(http(&api, "PUT", "/vm/poweroff").0, 202);
        assert!(vmm.wait_exit().success());
        let _ = std::fs::remove_file(dir.path().join("console.log"));
    }
}

/// A system call outside a thread's allow-list kills the VMM with SIGSYS, and only the VMM:
/// with `tgkill` removed from the api thread's list, a pause request (which kicks the vCPUs
/// from that thread) ends the VMM; the test process goes on.
#[test]
fn test_a_forbidden_syscall_kills_the_vmm_with_sigsys() {
    use std::os::unix::process::ExitStatusExt;
    if !require_kvm() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let guest = build_guest(dir.path());
    let api = dir.path().join("vmm.sock");
    let mut vmm = VmmProcess::start_with_args(
        dir.path(),
        &json!({
            "kernel": {"path": guest, "cmdline": "console=ttyS0 rmtest.h2g=7000"},
            "memory_mib": 32,
            "serial": {"log_path": dir.path().join("console.log")},
            "vsock": {"guest_cid": 3, "uds_path": dir.path().join("v.sock")},
            "api_socket": api,
        }),
        &["--seccomp-deny", "api:tgkill"],
    );
    vmm.wait_for_console("rmguest: vsock listening 7000");
    wait_for_path(&api);
    // Requests that make no forbidden call are answered.
    assert_eq!(http(&api, "GET", "/vm").0, 200);
    assert_eq!(http(&api, "GET", "/metrics").0, 200);
    assert!(
        vmm.log().contains("seccomp: removed from the allow-list"),
        "{}",
        vmm.log()
    );
    // The pause kicks the vCPUs with tgkill: the VMM dies before it can answer.
    let (status, body) = http(&api, "PUT", "/vm/pause");
    assert_eq!(status, 0, "an answer came: {body}");
    let exit = vmm.wait_exit();
    assert_eq!(exit.signal(), Some(libc::SIGSYS), "{exit}\n{}", vmm.log());
    // The test process is fine and the host is untouched: the API socket has no server.
    assert!(std::os::unix::net::UnixStream::connect(&api).is_err());
}
