//! The foundation's real-VM test: the guest image boots under QEMU, the agent answers
//! over the TCP carrier with the token, the host's docker CLI works through a forward of
//! the engine service, shutdown is clean, and the data disk keeps containers across boots.

use std::time::Duration;

use rmachine_e2e::*;
use rmachine_machine::guest_link::{Carrier, ControlClient, LinkError};
use rmachine_protocol::control::{Reply, Request};

const BOOT_TIMEOUT: Duration = Duration::from_secs(300);
const IMAGE: &str = "rmachine-e2e/busybox:1";

#[test]
fn test_guest_serves_docker_and_keeps_data_across_boots() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data.img");
    sparse_disk(&data, 8);

    // First boot: a fresh data disk that the agent formats.
    let boot1 = dir.path().join("boot1");
    std::fs::create_dir_all(&boot1).unwrap();
    let mut guest = Guest::boot(&boot1, &data);
    let ping_after = guest.wait_ping(&rt, BOOT_TIMEOUT);
    let (engine_after, info) = guest.wait_engine(&rt, BOOT_TIMEOUT);
    eprintln!("boot 1: ping after {ping_after:?}, engine ready after {engine_after:?}");
    assert!(info.data_disk_mounted, "data disk not mounted: {info:?}");
    assert_eq!(info.hostname, "e2e");
    assert_eq!(
        info.ip.as_deref(),
        Some("10.0.2.15"),
        "DHCP address: {info:?}"
    );

    match guest.control(&rt, Request::Version {}) {
        Ok(Reply::Version {
            protocol,
            agent,
            kernel,
        }) => {
            assert_eq!(protocol, rmachine_protocol::PROTOCOL_VERSION);
            assert_eq!(agent, rmachine_protocol::AGENT_VERSION);
            assert!(kernel.starts_with("6.12"), "kernel {kernel}");
        }
        other => panic!("version answered {other:?}"),
    }
    let now_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64;
    match guest.control(&rt, Request::SyncTime { unix_ns: now_ns }) {
        Ok(Reply::TimeSynced { offset_ns }) => {
            // The config disk carried the boot time, so the guest clock was already close.
            assert!(
                offset_ns.abs() < 600_000_000_000,
                "guest clock off by {offset_ns} ns before sync"
            );
        }
        other => panic!("sync_time answered {other:?}"),
    }

    // A wrong token is refused with a clear error, and the agent keeps serving.
    let Carrier::Tcp { ports, .. } = guest.carrier.as_ref() else {
        unreachable!()
    };
    let wrong = Carrier::Tcp {
        ports: ports.clone(),
        token: "0".repeat(32),
    };
    match rt.block_on(ControlClient::connect(&wrong)) {
        Err(e) => {
            let text = error_chain(&e);
            assert!(text.contains("wrong token"), "{text}");
            assert!(matches!(
                e,
                rmachine_machine::guest_link::ControlError::Link(LinkError::Hello { .. })
            ));
        }
        Ok(_) => panic!("a wrong token was accepted"),
    }
    assert!(matches!(
        guest.control(&rt, Request::Ping {}),
        Ok(Reply::Pong)
    ));

    // The host's docker CLI through a local forward of the engine service.
    let sock = guest.engine_socket(&rt);
    let server = docker_ok(&sock, &["version", "--format", "{{.Server.Version}}"]);
    assert!(
        server.trim().starts_with("26."),
        "engine version {server:?}"
    );
    let tarball = busybox_tarball(dir.path());
    docker_ok(&sock, &["import", tarball.to_str().unwrap(), IMAGE]);
    let out = docker_ok(&sock, &["run", "--rm", IMAGE, "echo", "hi"]);
    assert_eq!(out.trim(), "hi");
    docker_ok(&sock, &["create", "--name", "keepme", IMAGE, "true"]);

    // Clean shutdown: QEMU exits by itself with status 0.
    assert!(matches!(
        guest.control(&rt, Request::Shutdown { reboot: false }),
        Ok(Reply::ShuttingDown)
    ));
    let status = guest.wait_exit(Duration::from_secs(120));
    assert!(
        status.success(),
        "QEMU exit status {status}\n{}",
        guest.console_tail()
    );
    let console = guest.console();
    drop(guest);

    // Second boot with the same data disk: the container and image are still there.
    let boot2 = dir.path().join("boot2");
    std::fs::create_dir_all(&boot2).unwrap();
    let mut guest = Guest::boot(&boot2, &data);
    let (engine_after, _) = guest.wait_engine(&rt, BOOT_TIMEOUT);
    eprintln!("boot 2: engine ready after {engine_after:?}");
    let sock = guest.engine_socket(&rt);
    let names = docker_ok(&sock, &["ps", "-a", "--format", "{{.Names}}"]);
    assert!(
        names.lines().any(|n| n == "keepme"),
        "container lost across boots: {names:?}\nfirst console:\n{console}"
    );
    let images = docker_ok(&sock, &["images", "--format", "{{.Repository}}:{{.Tag}}"]);
    assert!(
        images.lines().any(|i| i == IMAGE),
        "image lost across boots: {images:?}"
    );
    assert!(matches!(
        guest.control(&rt, Request::Shutdown { reboot: false }),
        Ok(Reply::ShuttingDown)
    ));
    assert!(guest.wait_exit(Duration::from_secs(120)).success());
}
