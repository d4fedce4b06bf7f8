//! virtio-fs through vhost-user, for real: the test guest speaks FUSE on the device's request
//! queue, a real virtiofsd processes the queue in the guest memory the VMM shares with it, and
//! the host checks the files.

mod support;

use serde_json::json;
use support::*;

#[test]
fn test_guest_reads_and_writes_host_files_through_virtiofsd() {
    if !require_kvm() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::write(shared.join("hello.txt"), "hello from the host\n").unwrap();
    let socket = dir.path().join("fs.sock");
    let Some(tool) = require_tool(&VIRTIOFSD) else {
        return;
    };
    let daemon = Virtiofsd::start(
        &tool,
        None,
        &socket,
        &shared,
        &dir.path().join("virtiofsd.log"),
    );
    let guest = build_guest(dir.path());
    let mut vmm = VmmProcess::start(
        dir.path(),
        &json!({
            "memory_mib": 128,
            "kernel": {"path": guest, "cmdline": "console=ttyS0"},
            "serial": {"log_path": dir.path().join("console.log")},
            "filesystems": [{"tag": "hostshare", "socket_path": socket}],
            "api_socket": dir.path().join("api.sock")
        }),
    );
    let status = vmm.wait_exit();
    let console = vmm.console();
    eprintln!("{console}");
    assert!(
        status.success(),
        "exit {status}\n{console}\n{}\nvirtiofsd:\n{}",
        vmm.log(),
        daemon.log()
    );
    for line in [
        "rmguest: virtio device 26 at",
        "rmguest: fs tag hostshare queues 1",
        "rmguest: fs init 7.",
        "rmguest: fs read hello from the host",
        "rmguest: fs ok",
        "rmguest: all ok",
    ] {
        assert!(
            console.contains(line),
            "missing {line:?} in\n{console}\n{}\nvirtiofsd:\n{}",
            vmm.log(),
            daemon.log()
        );
    }
    assert_eq!(
        std::fs::read_to_string(shared.join("from-guest.txt")).unwrap(),
        "written by the test guest through virtio-fs\n"
    );
}

/// With virtiofsd running as an unprivileged user (as the host agent runs for a non-root
/// user), what the guest creates as root belongs to that user on the host.
#[test]
fn test_files_the_guest_creates_belong_to_the_user_running_virtiofsd() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    if !require_kvm() {
        return;
    }
    let Some(tool) = require_tool(&VIRTIOFSD) else {
        return;
    };
    // As root, run virtiofsd as `nobody`; otherwise as ourselves.
    // SAFETY: geteuid has no preconditions and touches no memory of ours.
    let me = unsafe { libc::geteuid() };
    let (run_as, owner) = if me == 0 {
        (Some(65534), 65534)
    } else {
        (None, me)
    };
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let tool = tool.copied_to(&dir.path().join("virtiofsd"));
    let (shared, run) = (dir.path().join("shared"), dir.path().join("run"));
    for d in [&shared, &run] {
        std::fs::create_dir(d).unwrap();
        std::os::unix::fs::chown(d, Some(owner), Some(owner)).unwrap();
    }
    std::fs::write(shared.join("hello.txt"), "hello from the host\n").unwrap();
    std::os::unix::fs::chown(shared.join("hello.txt"), Some(owner), Some(owner)).unwrap();
    let socket = run.join("fs.sock");
    let log = dir.path().join("virtiofsd.log");
    let daemon = Virtiofsd::start(&tool, run_as, &socket, &shared, &log);
    let guest = build_guest(dir.path());
    let mut vmm = VmmProcess::start(
        dir.path(),
        &json!({
            "memory_mib": 64,
            "kernel": {"path": guest, "cmdline": "console=ttyS0"},
            "serial": {"log_path": dir.path().join("console.log")},
            "filesystems": [{"tag": "user", "socket_path": socket}]
        }),
    );
    let status = vmm.wait_exit();
    let console = vmm.console();
    assert!(
        status.success() && console.contains("rmguest: fs ok"),
        "exit {status}\n{console}\n{}\nvirtiofsd:\n{}",
        vmm.log(),
        daemon.log()
    );
    let meta = std::fs::metadata(shared.join("from-guest.txt")).unwrap();
    assert_eq!(
        (meta.uid(), meta.gid()),
        (owner, owner),
        "owner of the guest's file"
    );
}

#[test]
fn test_missing_backend_is_refused_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let guest = dir.path().join("guest.elf");
    std::fs::write(&guest, b"not booted").unwrap();
    let config = dir.path().join("vm.json");
    std::fs::write(
        &config,
        serde_json::to_vec(&json!({
            "kernel": {"path": guest},
            "filesystems": [{"tag": "home", "socket_path": dir.path().join("nobody.sock")}]
        }))
        .unwrap(),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rmachine-vmm"))
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("filesystems[0].socket_path: cannot reach the vhost-user backend at"),
        "{stderr}"
    );
}
