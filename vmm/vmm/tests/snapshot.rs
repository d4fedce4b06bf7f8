//! KVM integration tests of snapshots: the test guest (`rmtest.snap=1`) puts state on a disk, the
//! balloon, the net device and a vsock connection, then counts on its clock; the host takes a
//! snapshot, powers the VMM off, waits, and starts a new VMM from the snapshot. The guest sees
//! the vsock transport reset, its old connection refused and its listener serving a new one,
//! reads the disk back, finds the balloon's sizes, reaches the net backend's new connection,
//! and its counter and clock go on (the clock by the time the VM was down). Snapshots that are
//! truncated, of another format version, corrupt or for other settings are refused, naming the
//! problem, with exit status 3.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;
use support::*;

fn read_frame(s: &mut UnixStream) -> Vec<u8> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).expect("frame length");
    let mut frame = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut frame).expect("frame");
    frame
}

fn write_frame(s: &mut UnixStream, frame: &[u8]) {
    s.write_all(&(frame.len() as u32).to_be_bytes()).unwrap();
    s.write_all(frame).unwrap();
}

/// Connects to guest port `port` through the hybrid vsock socket; returns the stream once the
/// VMM answered `OK`.
fn vsock_connect(uds: &Path, port: u32) -> UnixStream {
    let mut s = UnixStream::connect(uds).expect("connect to the vsock socket");
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    writeln!(s, "CONNECT {port}").unwrap();
    let mut line = String::new();
    BufReader::new(s.try_clone().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with("OK "), "CONNECT answered {line:?}");
    s
}

fn echo(s: &mut UnixStream, text: &[u8]) {
    s.write_all(text).unwrap();
    let mut back = vec![0u8; text.len()];
    s.read_exact(&mut back).unwrap();
    assert_eq!(back, text);
}

/// `(tick, clock_ms)` of each "snap tick" line.
fn ticks(console: &str) -> Vec<(u64, u64)> {
    console
        .lines()
        .filter_map(|l| l.strip_prefix("rmguest: snap tick "))
        .filter_map(|rest| {
            let mut w = rest.split_whitespace();
            let tick = w.next()?.parse().ok()?;
            let ms = w.nth(1)?.parse().ok()?;
            Some((tick, ms))
        })
        .collect()
}

struct Machine {
    dir: tempfile::TempDir,
    config: serde_json::Value,
    api: std::path::PathBuf,
    uds: std::path::PathBuf,
    snap: std::path::PathBuf,
}

fn machine() -> Machine {
    let dir = tempfile::tempdir().unwrap();
    let guest = build_guest(dir.path());
    let disk = dir.path().join("disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let api = dir.path().join("vmm.sock");
    let vsock_dir = dir.path().join("vsock");
    std::fs::create_dir(&vsock_dir).unwrap();
    let uds = vsock_dir.join("v.sock");
    let snap = dir.path().join("snap");
    let config = json!({
        "vcpus": 1,
        "memory_mib": 128,
        "kernel": {"path": guest, "cmdline": "console=ttyS0 rmtest.snap=1 rmtest.h2g=5000"},
        "serial": {"log_path": dir.path().join("console.log")},
        "disks": [{"id": "data", "path": disk}],
        "vsock": {"guest_cid": 3, "uds_path": uds},
        "net": {"backend": "passt", "socket": dir.path().join("passt.sock"), "mac": "02:00:00:00:00:01"},
        "balloon": {"free_page_reporting": true},
        "api_socket": api,
    });
    Machine {
        dir,
        config,
        api,
        uds,
        snap,
    }
}

#[test]
fn test_snapshot_and_restore_keep_disk_vsock_balloon_net_and_clock() {
    if !require_kvm() {
        return;
    }
    let m = machine();
    let listener = UnixListener::bind(m.dir.path().join("passt.sock")).unwrap();
    // The fake passt: one connection per VMM, as passt serves one client after another.
    let peer = std::thread::spawn(move || {
        let (mut first, _) = listener.accept().unwrap();
        first.set_read_timeout(Some(TIMEOUT)).unwrap();
        let before = read_frame(&mut first);
        assert_eq!(&before[14..33], b"rmguest-snap-before");
        let (mut second, _) = listener.accept().unwrap();
        second.set_read_timeout(Some(TIMEOUT)).unwrap();
        let after = read_frame(&mut second);
        assert_eq!(&after[14..32], b"rmguest-snap-after");
        let mut pong = vec![0u8; 60];
        pong[..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x01]);
        pong[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x02]);
        pong[12..14].copy_from_slice(&[0x88, 0xb5]);
        pong[14..23].copy_from_slice(b"snap-pong");
        write_frame(&mut second, &pong);
    });

    let mut vmm = VmmProcess::start(m.dir.path(), &m.config);
    vmm.wait_for_console("rmguest: snap vsock listening");
    let mut old = vsock_connect(&m.uds, 5000);
    echo(&mut old, b"hello-guest");
    vmm.wait_for_console("rmguest: snap tick 3 ");

    let (status, body) = http_with_body(
        &m.api,
        "PUT",
        "/vm/snapshot",
        &json!({"dir": m.snap}).to_string(),
    );
    assert_eq!(status, 200, "{body}\n{}", vmm.log());
    let info: serde_json::Value = serde_json::from_str(&body).unwrap();
    eprintln!("snapshot: {info}");
    let (_, state) = http(&m.api, "GET", "/vm");
    assert!(state.contains("\"state\":\"paused\""), "{state}");
    let memory = m.snap.join("memory");
    let size = std::fs::metadata(&memory).unwrap().len();
    assert_eq!(size, 128 << 20);
    let data = info["memory_data_bytes"].as_u64().unwrap();
    assert!(data > 0 && data < 16 << 20, "{info}");
    use std::os::unix::fs::MetadataExt;
    let allocated = std::fs::metadata(&memory).unwrap().blocks() * 512;
    assert!(
        allocated < 32 << 20,
        "memory file not sparse: {allocated} bytes allocated"
    );
    let (status, _) = http(&m.api, "PUT", "/vm/poweroff");
    assert_eq!(status, 202);
    assert!(vmm.wait_exit().success());
    let ticks_before = ticks(&vmm.console());
    // The old host end sees its connection end with the VMM.
    let mut rest = Vec::new();
    let _ = old.read_to_end(&mut rest);
    drop(vmm);

    let down = Instant::now();
    std::thread::sleep(Duration::from_millis(1500));
    let restore_args = ["--restore", m.snap.to_str().unwrap()];
    let mut vmm = VmmProcess::start_with_args(m.dir.path(), &m.config, &restore_args);
    vmm.wait_for_console("rmguest: snap vsock listening again");
    let downtime_ms = down.elapsed().as_millis() as u64;
    let mut new = vsock_connect(&m.uds, 5000);
    echo(&mut new, b"hello-again");
    vmm.wait_for_console("rmguest: snap done");
    let console = vmm.console();
    for line in [
        "rmguest: snap vsock transport reset",
        "rmguest: snap vsock old connection reset",
        "rmguest: snap vsock new connection ok",
        "rmguest: snap blk ok",
        "rmguest: snap balloon actual 3",
        "rmguest: snap net ok",
        "rmguest: all ok",
    ] {
        vmm.wait_for_console(line);
    }
    assert!(!console.contains("FAIL"), "{console}");
    assert!(vmm.wait_exit().success(), "{}", vmm.log());
    peer.join().unwrap();
    assert!(vmm.log().contains("restoring"), "{}", vmm.log());

    // The counter goes on from where it was, and the clock moved by the time the VM was down.
    let all = ticks(&vmm.console());
    let (last_tick, last_ms) = *ticks_before.last().unwrap();
    let after: Vec<_> = all.iter().filter(|t| t.0 > last_tick).collect();
    assert!(!after.is_empty(), "{all:?}");
    assert_eq!(after[0].0, last_tick + 1, "{all:?}");
    for pair in all.windows(2) {
        assert_eq!(pair[1].0, pair[0].0 + 1, "ticks restart or skip: {all:?}");
    }
    let jump = after[0].1 - last_ms;
    eprintln!(
        "guest clock: {last_ms} ms before, {} ms after; the VM was down about {downtime_ms} ms",
        after[0].1
    );
    assert!(
        jump >= 1500,
        "the guest clock moved {jump} ms over a downtime of 1500+ ms: {all:?}"
    );
    assert!(
        jump < downtime_ms + 10_000,
        "the guest clock jumped {jump} ms: {all:?}"
    );
}

/// Writes a snapshot of the test guest and returns the machine (the VMM powered off).
fn snapshot_of_running_guest() -> Machine {
    let m = machine();
    let listener = UnixListener::bind(m.dir.path().join("passt.sock")).unwrap();
    let _peer = std::thread::spawn(move || {
        // Keep the connections open until the test ends.
        let mut conns = Vec::new();
        while let Ok((s, _)) = listener.accept() {
            conns.push(s);
        }
    });
    let mut vmm = VmmProcess::start(m.dir.path(), &m.config);
    vmm.wait_for_console("rmguest: snap vsock listening");
    let (status, body) = http_with_body(
        &m.api,
        "PUT",
        "/vm/snapshot",
        &json!({"dir": m.snap}).to_string(),
    );
    assert_eq!(status, 200, "{body}");
    http(&m.api, "PUT", "/vm/poweroff");
    assert!(vmm.wait_exit().success());
    m
}

fn refused(m: &Machine, config: &serde_json::Value, snap: &Path) -> String {
    let args = ["--restore", snap.to_str().unwrap()];
    let mut vmm = VmmProcess::start_with_args(m.dir.path(), config, &args);
    let status = vmm.wait_exit();
    assert_eq!(status.code(), Some(3), "{}", vmm.log());
    vmm.log()
}

#[test]
fn test_restore_refuses_bad_snapshots_naming_the_problem() {
    if !require_kvm() {
        return;
    }
    let m = snapshot_of_running_guest();
    let copy = |name: &str| {
        let d = m.dir.path().join(name);
        std::fs::create_dir(&d).unwrap();
        for f in ["vm.state", "memory"] {
            std::fs::copy(m.snap.join(f), d.join(f)).unwrap();
        }
        d
    };

    let truncated = copy("truncated");
    let state = std::fs::read(truncated.join("vm.state")).unwrap();
    std::fs::write(truncated.join("vm.state"), &state[..state.len() / 2]).unwrap();
    let log = refused(&m, &m.config, &truncated);
    assert!(log.contains("the state document is truncated"), "{log}");
    assert!(log.contains("boot without --restore"), "{log}");

    let short_memory = copy("short-memory");
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(short_memory.join("memory"))
        .unwrap();
    f.set_len(64 << 20).unwrap();
    let log = refused(&m, &m.config, &short_memory);
    assert!(log.contains("the memory file is truncated"), "{log}");

    let version = copy("version");
    let mut state = std::fs::read(version.join("vm.state")).unwrap();
    state[8] = 9;
    std::fs::write(version.join("vm.state"), &state).unwrap();
    let log = refused(&m, &m.config, &version);
    assert!(
        log.contains("the snapshot has format version 9; this rmachine-vmm reads version 1"),
        "{log}"
    );

    let corrupt = copy("corrupt");
    let mut state = std::fs::read(corrupt.join("vm.state")).unwrap();
    let mid = state.len() / 2;
    state[mid] ^= 0x20;
    std::fs::write(corrupt.join("vm.state"), &state).unwrap();
    let log = refused(&m, &m.config, &corrupt);
    assert!(log.contains("checksum does not match"), "{log}");

    let mut bigger = m.config.clone();
    bigger["memory_mib"] = json!(256);
    let log = refused(&m, &bigger, &m.snap);
    assert!(
        log.contains("memory_mib: the snapshot has 128 MiB, the configuration 256 MiB"),
        "{log}"
    );
    let mut no_balloon = m.config.clone();
    no_balloon.as_object_mut().unwrap().remove("balloon");
    let log = refused(&m, &no_balloon, &m.snap);
    assert!(log.contains("devices: the snapshot has balloon"), "{log}");

    let log = refused(&m, &m.config, &m.dir.path().join("missing"));
    assert!(log.contains("cannot read"), "{log}");
}
