//! Opening a TAP device for virtio-net: `/dev/net/tun` with `IFF_TAP | IFF_NO_PI |
//! IFF_VNET_HDR`, a 12-byte virtio header (`virtio_net_hdr_v1`) and no offloads. The ioctls are
//! here because the devices crate has no `unsafe`; it gets the configured descriptor.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;

/// Bytes of the virtio header the TAP prepends to each frame.
const VNET_HDR_LEN: libc::c_int = 12;

/// Opens the existing TAP interface `name`.
pub fn open_tap(name: &str) -> io::Result<File> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains(['/', '\0']) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name:?} is not a valid interface name"),
        ));
    }
    let tun = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open("/dev/net/tun")?;
    // SAFETY: `ifreq` is plain data (a name array and a union of integers, addresses and a
    // pointer); all zeroes is a valid value of each.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    ifr.ifr_ifru.ifru_flags =
        (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short;
    // SAFETY: TUNSETIFF reads and writes one `struct ifreq`; `ifr` is one, owned by this frame
    // and NUL-terminated (the name is shorter than IFNAMSIZ). `tun` is an open descriptor.
    let rc = unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETIFF, &mut ifr) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    let hdr_len: libc::c_int = VNET_HDR_LEN;
    // SAFETY: TUNSETVNETHDRSZ reads one `int` through the pointer, which points to `hdr_len`,
    // alive for the call.
    let rc = unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETVNETHDRSZ, &hdr_len) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: TUNSETOFFLOAD takes its argument (the offload flags, none here) by value.
    let rc = unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETOFFLOAD, 0 as libc::c_ulong) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(tun)
}

#[cfg(test)]
mod tests {
    use super::*;

    use devices::virtio::net::{NetBackend, RecvStatus, SendStatus, TapBackend};
    use std::process::Command;

    /// A TAP interface made with `ip`, removed on drop.
    struct TestTap(String);

    impl TestTap {
        /// Creates `name` with 10.99.<n>.1/24, or says why it cannot (needs CAP_NET_ADMIN).
        fn create(name: &str, n: u8) -> Option<Self> {
            let ip = |args: &[&str]| {
                Command::new("ip")
                    .args(args)
                    .output()
                    .map(|o| o.status.success())
                    .unwrap_or(false)
            };
            if !ip(&["tuntap", "add", "dev", name, "mode", "tap"]) {
                let why = format!("cannot create tap {name} (needs ip and CAP_NET_ADMIN)");
                assert!(
                    std::env::var("REQUIRE_KVM").as_deref() != Ok("1"),
                    "REQUIRE_KVM=1 but {why}"
                );
                eprintln!("skipped: {why}");
                return None;
            }
            let tap = TestTap(name.to_string());
            let addr = format!("10.99.{n}.1/24");
            assert!(ip(&["addr", "add", &addr, "dev", name]));
            assert!(ip(&["link", "set", name, "up"]));
            Some(tap)
        }
    }

    impl Drop for TestTap {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["link", "del", &self.0]).status();
        }
    }

    #[test]
    fn test_tap_backend_gets_arp_reply_from_host() {
        let name = "rmtaptest0";
        let Some(_tap) = TestTap::create(name, 77) else {
            return;
        };
        let mut backend = TapBackend::new(open_tap(name).unwrap(), name.to_string()).unwrap();
        // ARP: who has 10.99.77.1? tell 10.99.77.2 (02:00:00:00:00:07).
        let guest_mac = [2u8, 0, 0, 0, 0, 7];
        let mut arp = vec![0xffu8; 6];
        arp.extend_from_slice(&guest_mac);
        arp.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
        arp.extend_from_slice(&guest_mac);
        arp.extend_from_slice(&[10, 99, 77, 2]);
        arp.extend_from_slice(&[0; 6]);
        arp.extend_from_slice(&[10, 99, 77, 1]);
        arp.resize(60, 0);
        let mut frame = Vec::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            assert_eq!(backend.send(&arp).unwrap(), SendStatus::Sent);
            std::thread::sleep(std::time::Duration::from_millis(50));
            let mut reply = None;
            while let RecvStatus::Frame = backend.recv(&mut frame).unwrap() {
                // An ARP reply to us (other frames, like IPv6 router solicitations, pass by).
                if frame.len() >= 42 && frame[..6] == guest_mac && frame[12..14] == [8, 6] {
                    reply = Some(frame.clone());
                }
            }
            if let Some(r) = reply {
                assert_eq!(&r[20..22], &[0, 2], "an ARP reply");
                assert_eq!(&r[28..32], &[10, 99, 77, 1]);
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no ARP reply from the host"
            );
        }
    }

    #[test]
    fn test_open_tap_refuses_bad_names() {
        for name in ["", "a/b", "0123456789abcdef"] {
            let e = open_tap(name).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{name:?}");
        }
    }
}
