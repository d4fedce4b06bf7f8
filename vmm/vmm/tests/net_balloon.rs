//! KVM integration tests of virtio-net and virtio-balloon: the test guest exchanges frames with
//! a fake passt (a unix socket speaking passt's framing: 4-byte big-endian length + Ethernet
//! frame) and reports free memory, which the host sees leave the VMM's RSS.

mod support;

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::Stdio;

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

fn metrics(api: &std::path::Path) -> serde_json::Value {
    let (status, body) = http(api, "GET", "/metrics");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

#[test]
fn test_net_frames_through_passt_stream() {
    if !require_kvm() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let guest = build_guest(dir.path());
    let socket = dir.path().join("passt.sock");
    let api = dir.path().join("vmm.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    let mac = [0x02, 0, 0, 0, 0, 0x01];
    let api_for_peer = api.clone();
    // The fake passt: checks the guest's frames, answers with one that needs two buffers.
    let peer = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(TIMEOUT)).unwrap();
        let ping = read_frame(&mut s);
        assert_eq!(ping.len(), 60);
        assert_eq!(&ping[..6], &[0xff; 6]);
        assert_eq!(&ping[6..12], &mac);
        assert_eq!(&ping[14..30], b"rmguest-net-ping");
        let mut reply = vec![0u8; 3000];
        reply[..6].copy_from_slice(&mac);
        reply[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x02]);
        reply[12..14].copy_from_slice(&[0x88, 0xb5]);
        for (i, b) in reply.iter_mut().enumerate().skip(14) {
            *b = (i * 7 + 1) as u8;
        }
        write_frame(&mut s, &reply);
        // The oversized and bad-header frames never arrive: the next one is "bye".
        let bye = read_frame(&mut s);
        assert_eq!(&bye[14..29], b"rmguest-net-bye");
        // The device counts a frame once the backend took it: the count may trail the bytes.
        let deadline = std::time::Instant::now() + TIMEOUT;
        let m = loop {
            let m = metrics(&api_for_peer);
            if m["devices"]["net"]["device"]["tx_frames"] == 2
                || std::time::Instant::now() > deadline
            {
                break m;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        let net = &m["devices"]["net"]["device"];
        let mut fin = vec![0u8; 60];
        fin[..6].copy_from_slice(&mac);
        fin[12..14].copy_from_slice(&[0x88, 0xb5]);
        fin[14..17].copy_from_slice(b"fin");
        write_frame(&mut s, &fin);
        let _ = s.read_to_end(&mut Vec::new());
        net.clone()
    });
    let mut vmm = VmmProcess::start(
        dir.path(),
        &json!({
            "memory_mib": 64,
            "kernel": {"path": guest, "cmdline": "console=ttyS0 reboot=k"},
            "serial": {"log_path": dir.path().join("console.log")},
            "net": {"backend": "passt", "socket": socket, "mac": "02:00:00:00:00:01"},
            "api_socket": api,
        }),
    );
    let status = vmm.wait_exit();
    let console = vmm.console();
    assert!(status.success(), "exit {status}\n{console}\n{}", vmm.log());
    for line in [
        "rmguest: virtio device 1 at",
        "rmguest: net mac 02:00:00:00:00:01",
        "rmguest: net rx ok 3000 bufs 2",
        "rmguest: net ok",
        "rmguest: all ok",
    ] {
        assert!(console.contains(line), "missing {line:?} in\n{console}");
    }
    let net = peer.join().unwrap();
    assert_eq!(net["tx_frames"], 2, "{net}");
    assert_eq!(net["tx_bytes"], 120, "{net}");
    assert_eq!(net["tx_dropped_oversized"], 1, "{net}");
    assert_eq!(net["tx_bad_headers"], 1, "{net}");
    assert_eq!(net["rx_frames"], 1, "{net}");
    assert_eq!(net["rx_bytes"], 3000, "{net}");
    assert_eq!(net["rx_bad_descriptors"], 0, "{net}");
}

#[test]
fn test_net_refuses_unreachable_passt_socket() {
    if !require_kvm() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let guest = build_guest(dir.path());
    let mut vmm = VmmProcess::start(
        dir.path(),
        &json!({
            "kernel": {"path": guest},
            "net": {"backend": "passt", "socket": dir.path().join("nobody.sock")},
        }),
    );
    let status = vmm.wait_exit();
    assert!(!status.success());
    assert!(
        vmm.log().contains("net.socket: cannot reach passt at"),
        "{}",
        vmm.log()
    );
}

/// Resident memory of a process, bytes.
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        * 1024
}

#[test]
fn test_balloon_free_page_reporting_returns_memory() {
    if !require_kvm() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let guest = build_guest(dir.path());
    let api = dir.path().join("vmm.sock");
    let config_path = dir.path().join("vm.json");
    std::fs::write(
        &config_path,
        serde_json::to_vec(&json!({
            "memory_mib": 128,
            "kernel": {"path": guest, "cmdline": "console=ttyS0 reboot=k rmtest.balloon_mib=64 rmtest.sync=1"},
            "serial": {"log_path": dir.path().join("console.log"), "stdio": true},
            "balloon": {"free_page_reporting": true},
            "api_socket": api,
        }))
        .unwrap(),
    )
    .unwrap();
    // The guest waits on COM1 at two points; the VMM feeds it our stdin.
    let stderr_path = dir.path().join("vmm.log");
    let child = vmm_command()
        .arg("--config")
        .arg(&config_path)
        .env("RUST_LOG", "info")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .unwrap();
    let mut vmm = VmmProcess {
        child,
        console: dir.path().join("console.log"),
        stderr_path,
    };
    let pid = vmm.child.id();
    let mut stdin = vmm.child.stdin.take().unwrap();
    vmm.wait_for_console("rmguest: balloon touched 64");
    let touched = rss_bytes(pid);
    stdin.write_all(b"g").unwrap();
    vmm.wait_for_console("rmguest: balloon waiting");
    let reported = rss_bytes(pid);
    let m = metrics(&api);
    let b = &m["devices"]["balloon"]["device"];
    // The report outside guest memory is refused as a whole.
    assert_eq!(b["reports"], 1, "{b}");
    assert_eq!(b["malformed_chains"], 1, "{b}");
    assert_eq!(b["reported_bytes"], 64 << 20, "{b}");
    assert_eq!(b["bad_ranges"], 1, "{b}");
    assert_eq!(b["inflated_pages"], 1, "{b}");
    assert_eq!(b["deflated_pages"], 1, "{b}");
    assert_eq!(b["discarded_bytes"], (64 << 20) + 4096, "{b}");
    assert_eq!(b["discard_errors"], 0, "{b}");
    eprintln!(
        "vmm rss: {} MiB with 64 MiB touched, {} MiB after the report",
        touched >> 20,
        reported >> 20
    );
    assert!(touched >= 64 << 20, "rss {touched} with 64 MiB touched");
    assert!(
        touched - reported >= 56 << 20,
        "rss went from {touched} to {reported} only"
    );
    stdin.write_all(b"g").unwrap();
    let status = vmm.wait_exit();
    let console = vmm.console();
    assert!(status.success(), "exit {status}\n{console}\n{}", vmm.log());
    for line in [
        "rmguest: balloon reported 64 MiB zeroed",
        "rmguest: balloon inflate ok",
        "rmguest: all ok",
    ] {
        assert!(console.contains(line), "missing {line:?} in\n{console}");
    }
}

/// A TAP interface for one test, removed on drop: no addresses, IPv6 off (the host sends
/// nothing on it by itself), an MTU that fits the test's 3000-byte frame.
struct Tap(String);

impl Tap {
    /// `None` (after printing why) when it cannot be made; panics instead when `REQUIRE_KVM=1`.
    fn create(name: &str) -> Option<Self> {
        let ip = |args: &[&str]| {
            std::process::Command::new("ip")
                .args(args)
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false)
        };
        let _ = ip(&["link", "del", name]);
        if !ip(&["tuntap", "add", "dev", name, "mode", "tap"]) {
            let why = format!("cannot create tap {name} (needs ip and CAP_NET_ADMIN)");
            if std::env::var("REQUIRE_KVM").as_deref() == Ok("1") {
                panic!("REQUIRE_KVM=1 but {why}");
            }
            eprintln!("skipped: {why}");
            return None;
        }
        let tap = Tap(name.to_string());
        let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6"), "1");
        assert!(ip(&["link", "set", name, "mtu", "4000", "up"]));
        Some(tap)
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.0])
            .status();
    }
}

/// A raw packet socket on one interface: what the host sees on the TAP and sends into it.
struct PacketSocket(std::os::fd::OwnedFd);

impl PacketSocket {
    fn open(ifname: &str) -> Self {
        use std::os::fd::FromRawFd;
        let proto = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: socket takes integers; the result is checked.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto)) };
        assert!(
            fd >= 0,
            "packet socket: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: `fd` was just opened and is owned by nothing else.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        let name = std::ffi::CString::new(ifname).unwrap();
        // SAFETY: `name` is a NUL-terminated string alive for the call.
        let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
        assert_ne!(index, 0, "no interface {ifname}");
        // SAFETY: `sockaddr_ll` is plain data; all zeroes is a valid value.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = proto;
        addr.sll_ifindex = index as i32;
        use std::os::fd::AsRawFd;
        // SAFETY: `addr` is a `sockaddr_ll` of the size given, alive for the call.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&raw const addr).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
        let timeout = libc::timeval {
            tv_sec: TIMEOUT.as_secs() as i64,
            tv_usec: 0,
        };
        // SAFETY: SO_RCVTIMEO reads one `timeval`, alive for the call.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const timeout).cast(),
                std::mem::size_of::<libc::timeval>() as u32,
            )
        };
        assert_eq!(rc, 0);
        PacketSocket(fd)
    }

    /// The next frame whose source is `mac`.
    fn recv_from(&self, mac: &[u8; 6]) -> Vec<u8> {
        use std::os::fd::AsRawFd;
        let mut buf = vec![0u8; 65536];
        loop {
            // SAFETY: reads at most `buf.len()` bytes into `buf`, owned by this frame.
            let n =
                unsafe { libc::recv(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            assert!(
                n >= 0,
                "no frame from the guest: {}",
                std::io::Error::last_os_error()
            );
            let frame = &buf[..n as usize];
            if frame.len() >= 14 && frame[6..12] == mac[..] {
                return frame.to_vec();
            }
        }
    }

    fn send(&self, frame: &[u8]) {
        use std::os::fd::AsRawFd;
        // SAFETY: sends `frame`, alive for the call.
        let n = unsafe { libc::send(self.0.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        assert_eq!(
            n,
            frame.len() as isize,
            "{}",
            std::io::Error::last_os_error()
        );
    }
}

#[test]
fn test_net_frames_through_tap() {
    if !require_kvm() {
        return;
    }
    let name = format!("rmvmtap{}", std::process::id() % 100_000);
    let Some(_tap) = Tap::create(&name) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let guest = build_guest(dir.path());
    let api = dir.path().join("vmm.sock");
    let packets = PacketSocket::open(&name);
    let mac = [0x02, 0, 0, 0, 0, 0x03];
    let mut vmm = VmmProcess::start(
        dir.path(),
        &json!({
            "memory_mib": 64,
            "kernel": {"path": guest, "cmdline": "console=ttyS0 reboot=k"},
            "serial": {"log_path": dir.path().join("console.log")},
            "net": {"backend": "tap", "tap": name, "mac": "02:00:00:00:00:03"},
            "api_socket": api,
        }),
    );
    let ping = packets.recv_from(&mac);
    assert_eq!(&ping[14..30], b"rmguest-net-ping", "{ping:?}");
    let mut reply = vec![0u8; 3000];
    reply[..6].copy_from_slice(&mac);
    reply[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x04]);
    reply[12..14].copy_from_slice(&[0x88, 0xb5]);
    for (i, b) in reply.iter_mut().enumerate().skip(14) {
        *b = (i * 7 + 1) as u8;
    }
    packets.send(&reply);
    let bye = packets.recv_from(&mac);
    assert_eq!(&bye[14..29], b"rmguest-net-bye");
    let deadline = std::time::Instant::now() + TIMEOUT;
    let net = loop {
        let m = metrics(&api);
        if m["devices"]["net"]["device"]["tx_frames"] == 2 || std::time::Instant::now() > deadline {
            break m["devices"]["net"]["device"].clone();
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    let mut fin = vec![0u8; 60];
    fin[..6].copy_from_slice(&mac);
    fin[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x04]);
    fin[12..14].copy_from_slice(&[0x88, 0xb5]);
    fin[14..17].copy_from_slice(b"fin");
    packets.send(&fin);
    let status = vmm.wait_exit();
    let console = vmm.console();
    assert!(status.success(), "exit {status}\n{console}\n{}", vmm.log());
    for line in [
        "rmguest: net mac 02:00:00:00:00:03",
        "rmguest: net rx ok 3000 bufs 2",
        "rmguest: net ok",
        "rmguest: all ok",
    ] {
        assert!(console.contains(line), "missing {line:?} in\n{console}");
    }
    assert!(vmm.log().contains("backend=\"tap\"") || vmm.log().contains("net device ready"));
    assert_eq!(net["tx_frames"], 2, "{net}");
    assert_eq!(net["tx_dropped_oversized"], 1, "{net}");
    assert_eq!(net["tx_bad_headers"], 1, "{net}");
    assert_eq!(net["rx_frames"], 1, "{net}");
    assert_eq!(net["rx_bytes"], 3000, "{net}");
}
