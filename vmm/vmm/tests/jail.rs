//! The jailed VMM (`jail: {uid, gid}`): the test guest drives a disk and vsock both ways from
//! inside the jail, and the host checks what the VMM process is: its user, its namespaces and
//! the whole of the file tree it can see.

mod support;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use serde_json::json;
use support::*;

/// The unprivileged user and group the tests jail the VMM as (`nobody`).
const JAIL_ID: u32 = 65534;

/// Whether jail tests can run: they start the VMM as root. Skips with the reason, or fails
/// when `REQUIRE_KVM=1` (CI runs as root).
fn require_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var("REQUIRE_KVM").as_deref() == Ok("1") {
        panic!("REQUIRE_KVM=1 but the jail tests need root");
    }
    eprintln!("skipped: the jail tests start the vmm as root");
    false
}

/// Every path under `root`, relative to it (folders end with `/`).
fn tree(root: &Path) -> BTreeSet<String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeSet<String>) {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            if entry.file_type().unwrap().is_dir() {
                out.insert(format!("{rel}/"));
                walk(root, &path, out);
            } else {
                out.insert(rel);
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(root, root, &mut out);
    out
}

/// The folders leading to `path` and `path`, relative to `/`, as [`tree`] names them.
fn with_parents(path: &Path, dir: bool) -> Vec<String> {
    let rel = path.strip_prefix("/").unwrap();
    let mut out: Vec<String> = rel
        .ancestors()
        .skip(1)
        .filter(|a| !a.as_os_str().is_empty())
        .map(|a| format!("{}/", a.display()))
        .collect();
    out.push(if dir {
        format!("{}/", rel.display())
    } else {
        rel.display().to_string()
    });
    out
}

/// A field of `/proc/<pid>/status`.
fn status_field(pid: u32, name: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// The one child of `pid` (the jailed VMM under its waiting parent).
fn only_child(pid: u32) -> u32 {
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap();
    let children: Vec<u32> = children
        .split_whitespace()
        .map(|c| c.parse().unwrap())
        .collect();
    assert_eq!(children.len(), 1, "children of {pid}: {children:?}");
    children[0]
}

#[test]
fn test_jailed_vmm_drives_disk_and_vsock_and_sees_only_its_files() {
    if !require_kvm() || !require_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let guest = build_guest(dir.path());
    let disk = dir.path().join("data.img");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    // The jail user opens the data disk read-write and the others read-only, by its own rights.
    std::os::unix::fs::chown(&disk, Some(JAIL_ID), Some(JAIL_ID)).unwrap();
    let ro = dir.path().join("root.img");
    std::fs::write(&ro, vec![0x11u8; 4096]).unwrap();
    // The vsock socket in a folder of its own, which the jail shows (searchable by the user).
    let vsock_dir = dir.path().join("vsock");
    std::fs::create_dir(&vsock_dir).unwrap();
    std::fs::set_permissions(&vsock_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let uds = vsock_dir.join("vsock.sock");
    let g2h: PathBuf = format!("{}_5000", uds.display()).into();
    let listener = UnixListener::bind(&g2h).unwrap();
    // A host service the jailed VMM may connect to: writable by the jail user.
    std::fs::set_permissions(&g2h, std::fs::Permissions::from_mode(0o666)).unwrap();
    let echo = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(TIMEOUT)).unwrap();
        let mut buf = [0u8; 15];
        s.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"ping-from-guest");
        s.write_all(b"pong-from-host").unwrap();
        let _ = s.read_to_end(&mut Vec::new());
    });
    let api = dir.path().join("vmm.sock");
    let mut vmm = VmmProcess::start(
        dir.path(),
        &json!({
            "memory_mib": 64,
            "kernel": {"path": guest, "cmdline": "console=ttyS0 reboot=k rmtest.g2h=5000 rmtest.h2g=6000"},
            "serial": {"log_path": dir.path().join("console.log")},
            "disks": [
                {"id": "data", "path": disk},
                {"id": "root", "path": ro, "read_only": true}
            ],
            "vsock": {"guest_cid": 42, "uds_path": uds},
            "api_socket": api,
            "jail": {"uid": JAIL_ID, "gid": JAIL_ID},
        }),
    );
    vmm.wait_for_console("rmguest: vsock g2h ok");
    echo.join().unwrap();
    vmm.wait_for_console("rmguest: vsock listening 6000");

    // The process tree: the waiting parent and the VMM, both the jail user, no capabilities.
    let parent = vmm.child.id();
    let jailed = only_child(parent);
    for pid in [parent, jailed] {
        let ids = format!("{JAIL_ID} {JAIL_ID} {JAIL_ID} {JAIL_ID}");
        assert_eq!(status_field(pid, "Uid:"), ids, "uid of {pid}");
        assert_eq!(status_field(pid, "Gid:"), ids, "gid of {pid}");
        assert_eq!(
            status_field(pid, "CapEff:"),
            "0000000000000000",
            "caps of {pid}"
        );
        assert_eq!(
            status_field(pid, "NoNewPrivs:"),
            "1",
            "no_new_privs of {pid}"
        );
        assert_eq!(status_field(pid, "Seccomp:"), "2", "seccomp of {pid}");
    }
    // The VMM is PID 1 of its own PID namespace, in mount and network namespaces of its own.
    assert_eq!(status_field(jailed, "NSpid:"), format!("{jailed} 1"));
    for ns in ["mnt", "net", "pid", "ipc"] {
        let ours = std::fs::read_link(format!("/proc/self/ns/{ns}")).unwrap();
        let its = std::fs::read_link(format!("/proc/{jailed}/ns/{ns}")).unwrap();
        assert_ne!(ours, its, "{ns} namespace");
    }

    // Everything the VMM can see: the kernel, the disks, the vsock folder and /dev/kvm.
    let seen = tree(&PathBuf::from(format!("/proc/{jailed}/root")));
    let mut expected: BTreeSet<String> = ["dev/", "dev/kvm"].map(String::from).into();
    for file in [&guest, &disk, &ro] {
        expected.extend(with_parents(file, false));
    }
    expected.extend(with_parents(&vsock_dir, true));
    expected.insert(format!("{}", uds.strip_prefix("/").unwrap().display()));
    expected.insert(format!("{}", g2h.strip_prefix("/").unwrap().display()));
    assert_eq!(seen, expected);
    // Not the files beside them, nor anything else of the host.
    let inside = |p: &Path| PathBuf::from(format!("/proc/{jailed}/root{}", p.display()));
    for hidden in [
        dir.path().join("vm.json"),
        dir.path().join("console.log"),
        api.clone(),
        "/etc/passwd".into(),
        "/proc/self".into(),
    ] {
        assert!(!inside(&hidden).exists(), "{} is visible", hidden.display());
    }

    // The API answers at its host path (asked while the guest waits for the host's
    // connection below: once the echo is done the guest ends, and with it the VMM).
    let (status, body) = http(&api, "GET", "/vm");
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["config"]["jail"], json!({"uid": JAIL_ID, "gid": JAIL_ID}));

    // Host -> guest through the hybrid socket at its host path.
    let mut s = UnixStream::connect(&uds).unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    s.write_all(b"CONNECT 6000\n").unwrap();
    let mut reader = BufReader::new(s.try_clone().unwrap());
    let mut ok = String::new();
    reader.read_line(&mut ok).unwrap();
    assert!(ok.starts_with("OK "), "{ok:?}");
    s.write_all(b"hello-guest").unwrap();
    let mut back = [0u8; 11];
    reader.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"hello-guest");
    drop(reader);
    drop(s);

    let status = vmm.wait_exit();
    let console = vmm.console();
    assert!(status.success(), "exit {status}\n{console}\n{}", vmm.log());
    for line in [
        "rmguest: blk rw ok",
        "rmguest: blk ro ok",
        "rmguest: vsock h2g ok",
        "rmguest: all ok",
    ] {
        assert!(console.contains(line), "missing {line:?} in\n{console}");
    }
    // The host sees what the guest wrote.
    let content = std::fs::read(&disk).unwrap();
    for (i, b) in content[1024..1024 + 4096].iter().enumerate() {
        assert_eq!(*b, (i as u32 * 7 + 3) as u8, "byte {i}");
    }
}

/// The jail user must be able to open the data disk: an error names the field and the user.
#[test]
fn test_jail_names_a_disk_its_user_cannot_open() {
    if !require_kvm() || !require_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let guest = build_guest(dir.path());
    let disk = dir.path().join("data.img");
    std::fs::write(&disk, vec![0u8; 4096]).unwrap();
    std::fs::set_permissions(&disk, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut vmm = VmmProcess::start(
        dir.path(),
        &json!({
            "kernel": {"path": guest},
            "disks": [{"id": "data", "path": disk}],
            "jail": {"uid": JAIL_ID, "gid": JAIL_ID},
        }),
    );
    let status = vmm.wait_exit();
    assert_eq!(status.code(), Some(1), "{}", vmm.log());
    assert!(
        vmm.log().contains(&format!(
            "jail: disks[0].path: uid {JAIL_ID} cannot open {} (read and write)",
            disk.display()
        )),
        "{}",
        vmm.log()
    );
}

/// A forbidden system call in the jailed VMM kills it with SIGSYS, and the waiting parent
/// (the process the host agent started) ends the same way.
#[test]
fn test_jailed_vmm_killed_by_seccomp_ends_its_parent_with_sigsys() {
    use std::os::unix::process::ExitStatusExt;
    if !require_kvm() || !require_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let guest = build_guest(dir.path());
    let api = dir.path().join("vmm.sock");
    std::fs::create_dir(dir.path().join("vsock")).unwrap();
    let mut vmm = VmmProcess::start_with_args(
        dir.path(),
        &json!({
            "kernel": {"path": guest, "cmdline": "console=ttyS0 rmtest.h2g=7000"},
            "memory_mib": 32,
            "serial": {"log_path": dir.path().join("console.log")},
            "vsock": {"guest_cid": 3, "uds_path": dir.path().join("vsock/v.sock")},
            "api_socket": api,
            "jail": {"uid": JAIL_ID, "gid": JAIL_ID},
        }),
        &["--seccomp-deny", "api:tgkill"],
    );
    vmm.wait_for_console("rmguest: vsock listening 7000");
    wait_for_path(&api);
    assert_eq!(http(&api, "PUT", "/vm/pause").0, 0);
    let exit = vmm.wait_exit();
    assert_eq!(exit.signal(), Some(libc::SIGSYS), "{exit}\n{}", vmm.log());
}

/// Writes `text` to the file `path` (both NUL-free static bytes; `path` NUL-terminated) with
/// raw system calls only: safe between fork and exec.
fn write_file_raw(path: &[u8], text: &[u8]) -> std::io::Result<()> {
    // SAFETY: `path` is NUL-terminated (checked by the callers' literals); open takes it and
    // integers.
    let fd = unsafe { libc::open(path.as_ptr().cast(), libc::O_WRONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: writes `text`, alive for the call, to the descriptor just opened.
    let n = unsafe { libc::write(fd, text.as_ptr().cast(), text.len()) };
    let err = std::io::Error::last_os_error();
    // SAFETY: closes the descriptor opened above.
    unsafe { libc::close(fd) };
    if n != text.len() as isize {
        return Err(err);
    }
    Ok(())
}

/// Starts the VMM as user 1000 without capabilities, in a user namespace where that user is
/// the host's root (so it can open /dev/kvm and the test's files): what a user without
/// CAP_SYS_ADMIN has. With `no_nested_namespaces`, that namespace allows no user namespace
/// inside it (`user.max_user_namespaces = 0`), as on a host that disables them.
fn start_as_user(dir: &Path, config: &serde_json::Value, no_nested_namespaces: bool) -> VmmProcess {
    use std::os::unix::process::CommandExt;
    let config_path = dir.join("vm.json");
    std::fs::write(&config_path, serde_json::to_vec_pretty(config).unwrap()).unwrap();
    let stderr_path = dir.join("vmm.log");
    let mut cmd = vmm_command();
    cmd.arg("--config")
        .arg(&config_path)
        .env("RUST_LOG", "info")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&stderr_path).unwrap());
    // SAFETY: the closure runs between fork and exec and makes raw system calls only
    // (unshare, open, write, close), which are async-signal-safe; it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::unshare(libc::CLONE_NEWUSER) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            write_file_raw(b"/proc/self/setgroups\0", b"deny")?;
            write_file_raw(b"/proc/self/uid_map\0", b"1000 0 1")?;
            write_file_raw(b"/proc/self/gid_map\0", b"1000 0 1")?;
            if no_nested_namespaces {
                write_file_raw(b"/proc/sys/user/max_user_namespaces\0", b"0")?;
            }
            Ok(())
        });
    }
    VmmProcess {
        child: cmd.spawn().expect("start rmachine-vmm in a user namespace"),
        console: dir.join("console.log"),
        stderr_path,
    }
}

/// Started by a user without CAP_SYS_ADMIN, the VMM jails itself in a user namespace of that
/// user: same confinement, no capabilities.
#[test]
fn test_jail_by_a_user_without_cap_sys_admin_uses_a_user_namespace() {
    if !require_kvm() || !require_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let guest = build_guest(dir.path());
    let disk = dir.path().join("data.img");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let vsock_dir = dir.path().join("vsock");
    std::fs::create_dir(&vsock_dir).unwrap();
    let mut vmm = start_as_user(
        dir.path(),
        &json!({
            "memory_mib": 64,
            "kernel": {"path": guest, "cmdline": "console=ttyS0 reboot=k rmtest.h2g=7000"},
            "serial": {"log_path": dir.path().join("console.log")},
            "disks": [{"id": "data", "path": disk}],
            "rng": {},
            "vsock": {"guest_cid": 3, "uds_path": vsock_dir.join("v.sock")},
            "jail": {"uid": 1000, "gid": 1000},
        }),
        false,
    );
    // The guest waits there for a connection that does not come: it stays up.
    vmm.wait_for_console("rmguest: vsock listening 7000");
    vmm.wait_for_log("jail: root built");
    assert!(vmm.log().contains("UserNamespace"), "{}", vmm.log());
    let jailed = only_child(vmm.child.id());
    assert_eq!(status_field(jailed, "CapEff:"), "0000000000000000");
    assert_eq!(status_field(jailed, "NoNewPrivs:"), "1");
    // Two user namespaces deep: the test's and the VMM's own.
    let ours = std::fs::read_link("/proc/self/ns/user").unwrap();
    let its = std::fs::read_link(format!("/proc/{jailed}/ns/user")).unwrap();
    assert_ne!(ours, its);
    let seen = tree(&PathBuf::from(format!("/proc/{jailed}/root")));
    let mut expected: BTreeSet<String> =
        ["dev/", "dev/kvm", "dev/urandom"].map(String::from).into();
    for file in [&guest, &disk] {
        expected.extend(with_parents(file, false));
    }
    expected.extend(with_parents(&vsock_dir, true));
    expected.extend(with_parents(&vsock_dir.join("v.sock"), false));
    assert_eq!(seen, expected);
    // (The rng device opened /dev/urandom at start; the guest drives it after vsock.)
    assert!(
        vmm.console().contains("rmguest: blk rw ok"),
        "{}",
        vmm.console()
    );
}

/// Without CAP_SYS_ADMIN and with user namespaces disabled, the jail cannot be built: the VMM
/// says what is missing and exits 1.
#[test]
fn test_jail_without_cap_sys_admin_nor_user_namespaces_says_what_is_missing() {
    if !require_kvm() || !require_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let guest = build_guest(dir.path());
    let mut vmm = start_as_user(
        dir.path(),
        &json!({"kernel": {"path": guest}, "jail": {"uid": 1000, "gid": 1000}}),
        true,
    );
    let status = vmm.wait_exit();
    assert_eq!(status.code(), Some(1), "{}", vmm.log());
    let log = vmm.log();
    for words in [
        "jail: cannot create new user namespaces",
        "lacks CAP_SYS_ADMIN",
        "user namespaces are disabled",
        "user.max_user_namespaces=0",
    ] {
        assert!(log.contains(words), "{words:?} not in\n{log}");
    }
    // And a jail user other than the starting user is refused naming the field.
    let mut vmm = start_as_user(
        dir.path(),
        &json!({"kernel": {"path": guest}, "jail": {"uid": 1001, "gid": 1000}}),
        false,
    );
    assert_eq!(vmm.wait_exit().code(), Some(1));
    assert!(
        vmm.log()
            .contains("jail.uid: 1001 is not the user starting the vmm (1000)"),
        "{}",
        vmm.log()
    );
}

#[test]
fn test_jailed_vmm_writes_snapshots_in_snapshot_dir_and_restores_from_them() {
    use std::os::unix::fs::MetadataExt;
    if !require_kvm() || !require_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let guest = build_guest(dir.path());
    let api = dir.path().join("vmm.sock");
    std::fs::create_dir(dir.path().join("vsock")).unwrap();
    let uds = dir.path().join("vsock/v.sock");
    // The folder the jail shows read-write, the jail user's.
    let snaps = dir.path().join("snapshots");
    std::fs::create_dir(&snaps).unwrap();
    std::os::unix::fs::chown(&snaps, Some(JAIL_ID), Some(JAIL_ID)).unwrap();
    let config = json!({
        "kernel": {"path": guest, "cmdline": "console=ttyS0 reboot=k rmtest.h2g=7000"},
        "memory_mib": 32,
        "serial": {"log_path": dir.path().join("console.log")},
        "vsock": {"guest_cid": 3, "uds_path": uds},
        "api_socket": api,
        "snapshot_dir": snaps,
        "jail": {"uid": JAIL_ID, "gid": JAIL_ID},
    });
    let mut vmm = VmmProcess::start(dir.path(), &config);
    vmm.wait_for_console("rmguest: vsock listening 7000");
    wait_for_path(&api);
    // No folder in the request: the configured one, the only one the jail can write.
    let (status, body) = http(&api, "PUT", "/vm/snapshot");
    assert_eq!(status, 200, "{body}\n{}", vmm.log());
    let snap = snaps.join("vm.state");
    assert_eq!(std::fs::metadata(&snap).unwrap().uid(), JAIL_ID);
    assert_eq!(
        std::fs::metadata(snaps.join("memory")).unwrap().len(),
        32 << 20
    );
    // A folder outside it is not in the jail.
    let (status, body) = http_with_body(
        &api,
        "PUT",
        "/vm/snapshot",
        &json!({"dir": dir.path().join("elsewhere")}).to_string(),
    );
    assert_eq!(status, 500, "{body}");
    assert!(body.contains("cannot create the snapshot folder"), "{body}");
    assert_eq!(http(&api, "PUT", "/vm/poweroff").0, 202);
    assert!(vmm.wait_exit().success());
    drop(vmm);

    // Restored in a jail too: the snapshot is read before the jail is entered.
    let args = ["--restore", snaps.to_str().unwrap()];
    let mut vmm = VmmProcess::start_with_args(dir.path(), &config, &args);
    // The sockets of the first VMM are still there: wait for this one's.
    vmm.wait_for_log("restoring");
    let mut s = UnixStream::connect(&uds).unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    writeln!(s, "CONNECT 7000").unwrap();
    let mut line = String::new();
    BufReader::new(s.try_clone().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with("OK "), "{line:?}\n{}", vmm.log());
    s.write_all(b"hello-guest").unwrap();
    let mut back = [0u8; 11];
    s.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"hello-guest");
    drop(s);
    vmm.wait_for_console("rmguest: vsock h2g ok");
    assert!(vmm.wait_exit().success(), "{}", vmm.log());
}
