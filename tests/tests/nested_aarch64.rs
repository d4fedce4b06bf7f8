//! rmachine-vmm on aarch64, on real KVM, nested (issue 11): an arm64 L1 under
//! `qemu-system-aarch64 -M virt,virtualization=on,gic-version=3` (software emulation with
//! EL2) runs the project's arm64 guest kernel with KVM in VHE mode; rmachine-vmm, built
//! static for aarch64, boots a test guest (L2) on it: the same kernel `Image`, a busybox root
//! on a read-only erofs virtio-blk disk, a second disk and an entropy device, two vCPUs (the
//! second brought up through PSCI), the PL011 console, the device tree, the in-kernel GICv3
//! and arch timer. The guest reads both disks, reads and writes an address no device claims,
//! prints what it saw and powers off through PSCI; rmachine-vmm must exit 0.
//!
//! A second test boots the arm64 guest image the same way, to the agent's `ping` over the
//! VMM's hybrid vsock socket and the engine's version, then a power off through the agent
//! (see its doc for why it is not part of the default run).
//!
//! The harness is `rmachine_e2e::nested::aarch64`. Needs `qemu-system-aarch64`, the arm64
//! guest image (for its kernel) and the `aarch64-unknown-linux-musl` Rust target, all of which
//! `installers/linux/arm64.sh` installs or builds; fails with that instruction without them.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use rmachine_e2e::nested::aarch64::{self, Disk, Member};
use rmachine_e2e::nested::{build, l1, l2};
use rmachine_e2e::{busybox_of, image_of, Arch};
use rmachine_machine::paths::Paths;
use vmm::config::{DiskConfig, KernelConfig, RngConfig, SerialConfig, VmConfig, VsockConfig};

/// The whole L1 run, boot to power off (about 10 s on an idle machine).
const L1_TIMEOUT: Duration = Duration::from_secs(300);
/// How long L1 lets the guest run before it kills the VMM.
const L2_TIMEOUT_S: u64 = 180;
/// What the guest's root disk says.
const ROOT_MARKER: &str = "l2-root-read-over-virtio-blk";
/// What the guest's second disk holds.
const DATA_MARKER: &str = "l2-data-disk-read-over-virtio-blk";
/// The guest's vCPUs.
const L2_VCPUS: u8 = 2;

/// The line the guest must print (its checks, see `aarch64-l2-init.sh`).
fn expected_l2_line() -> String {
    format!(
        "NESTED L2 root={ROOT_MARKER} data={DATA_MARKER} unmapped_read=0xFFFFFFFF \
         cpus={L2_VCPUS} arch=aarch64"
    )
}

/// rmachine-vmm's configuration inside L1.
fn vm_config() -> VmConfig {
    let disk = |id: &str, path: &str| DiskConfig {
        id: id.into(),
        path: path.into(),
        read_only: true,
        slot: None,
    };
    VmConfig {
        vcpus: Some(L2_VCPUS),
        memory_mib: Some(256),
        kernel: KernelConfig {
            path: "/l2/Image".into(),
            cmdline: Some(
                "console=ttyAMA0 root=/dev/vda ro rootfstype=erofs init=/init panic=-1 quiet"
                    .into(),
            ),
            initrd: None,
        },
        cpu: None,
        serial: Some(SerialConfig {
            log_path: None,
            stdio: true,
        }),
        disks: vec![disk("root", "/l2/root.erofs"), disk("data", "/l2/data.img")],
        vsock: None,
        rng: Some(RngConfig::default()),
        net: None,
        balloon: None,
        filesystems: Vec::new(),
        api_socket: None,
        snapshot_dir: None,
        jail: None,
        extra_nets: Vec::new(),
    }
}

#[test]
fn test_rmachine_vmm_boots_an_arm64_guest_under_nested_kvm() {
    let total = Instant::now();
    aarch64::require_qemu();
    let (manifest, image_dir) = image_of(Arch::Arm64);
    let guest_kernel = image_dir.join(&manifest.kernel.file);
    let busybox = busybox_of(Arch::Arm64);
    let vmm = aarch64::build_vmm();
    let cache = Paths::from_env()
        .expect("HOME or RMACHINE_CACHE is set")
        .cache()
        .join("nested-aarch64");

    let mut l2_tree = aarch64::busybox_tree(&busybox);
    l2_tree.push((
        "init".into(),
        Member::Bytes(aarch64::L2_INIT.as_bytes().to_vec(), 0o755),
    ));
    l2_tree.push((
        "etc/marker".into(),
        Member::Bytes(format!("{ROOT_MARKER}\n").into_bytes(), 0o644),
    ));
    let l2_root = aarch64::erofs(&cache, "l2-root", &l2_tree);
    let mut data = DATA_MARKER.as_bytes().to_vec();
    data.resize(4096, 0);

    let vm_json = serde_json::to_string_pretty(&vm_config()).expect("vm config to json");
    let env = format!(
        "L2_TIMEOUT_S={L2_TIMEOUT_S}\nVMM_LOG_LEVEL=info\nEXPECT_L2='{}'\n",
        expected_l2_line()
    );
    let mut l1_tree = aarch64::busybox_tree(&busybox);
    for (path, member) in [
        (
            "init",
            Member::Bytes(aarch64::L1_INIT.as_bytes().to_vec(), 0o755),
        ),
        ("bin/rmachine-vmm", Member::Copy(vmm.clone(), 0o755)),
        ("l2", Member::Dir),
        ("l2/Image", Member::Copy(guest_kernel.clone(), 0o644)),
        ("l2/root.erofs", Member::Copy(l2_root.clone(), 0o644)),
        ("l2/data.img", Member::Bytes(data, 0o644)),
        ("etc/nested", Member::Dir),
        (
            "etc/nested/vm.json",
            Member::Bytes(vm_json.into_bytes(), 0o644),
        ),
        ("etc/nested/env", Member::Bytes(env.into_bytes(), 0o644)),
    ] {
        l1_tree.push((path.to_string(), member));
    }
    let l1_root = aarch64::erofs(&cache, "l1-root", &l1_tree);
    let prepared_s = total.elapsed().as_secs_f64();

    let log_dir = aarch64::log_dir(&build::target_dir());
    std::fs::create_dir_all(&log_dir).expect("create the log folder");
    let log = log_dir.join("l1-console.log");
    let make_cmd = || {
        aarch64::command(
            &guest_kernel,
            &[Disk {
                path: l1_root.clone(),
                read_only: true,
                serial: None,
            }],
            aarch64::L1_MEMORY_MIB,
            "",
        )
    };
    eprintln!(
        "nested-aarch64: image {}, L1 root {}, L1 console in {}\nnested-aarch64: {:?}",
        manifest.version,
        l1_root.display(),
        log.display(),
        make_cmd()
    );
    let run = l1::run_again_if_frozen(make_cmd, L1_TIMEOUT, &log);
    let o = l1::parse(&run.lines);
    let l2_init = aarch64::first_line_time(&run.lines, "L2| NESTED L2 init");
    let l2_checked = aarch64::first_line_time(&run.lines, "L2| NESTED L2 root=");
    let vmm_exit = aarch64::first_line_time(&run.lines, "NESTED L1 rmachine-vmm exited");
    let since_vmm = |t: Option<f64>| match (t, o.vmm_start_s) {
        (Some(t), Some(s)) => format!("{:.1}", t - s),
        _ => "-".into(),
    };
    eprintln!(
        "nested-aarch64 timings (s): prepare={prepared_s:.1} l1_boot={} \
         vmm_start_to_l2_init={} vmm_start_to_l2_checks={} vmm_start_to_vmm_exit={} \
         l1_run={:.1} total={:.1}",
        o.l1_init_s.map_or("-".into(), |v| format!("{v:.1}")),
        since_vmm(l2_init),
        since_vmm(l2_checked),
        since_vmm(vmm_exit),
        run.elapsed.as_secs_f64(),
        total.elapsed().as_secs_f64()
    );
    if !o.pass {
        let status = if run.timed_out {
            format!("L1 killed after {L1_TIMEOUT:?}")
        } else {
            "L1 exited".to_string()
        };
        panic!(
            "no NESTED PASS ({status}); failures: {:?}\n\
             --- L1 console (last 40 lines) ---\n{}\n\
             --- L2 guest console (last 40 lines) ---\n{}\n\
             --- rmachine-vmm log ---\n{}\n\
             --- qemu stderr ---\n{}\n(full L1 console: {})",
            o.failures,
            l1::tail(&run.lines, 40, |l| !l.starts_with("L2| ")
                && !l.starts_with("VMM| ")),
            l1::tail(&run.lines, 40, |l| l.starts_with("L2| ")),
            l1::tail(&run.lines, 40, |l| l.starts_with("VMM| ")),
            run.stderr,
            log.display()
        );
    }
    assert!(
        o.failures.is_empty(),
        "PASS with failures: {:?}",
        o.failures
    );
    let expected = format!("L2| {}", expected_l2_line());
    assert!(
        run.lines.iter().any(|(_, l)| l.trim_end() == expected),
        "the guest's line is missing: {expected}"
    );
    // The guest's garbage MMIO (0x0c000000: no device) was logged and survived.
    for access in ["read from", "write to"] {
        assert!(
            run.lines.iter().any(|(_, l)| l.contains("VMM| ")
                && l.contains(&format!("WARN {access} unmapped guest address"))
                && l.contains("addr=201326592")),
            "the VMM did not log the guest's {access} an unmapped address"
        );
    }
}

/// The guest image's run: how long the client in L1 tries to reach the agent and the engine.
const CLIENT_TIMEOUT_S: u64 = 900;
/// How long the guest may take to power off once asked.
const SHUTDOWN_TIMEOUT_S: u64 = 120;
/// The guest image's whole L1 run.
const L1_AGENT_TIMEOUT: Duration = Duration::from_secs(20 * 60);
/// L1's RAM for the guest image (the guest has [`l2::L2_MEMORY_MIB`] of it).
const L1_AGENT_MEMORY_MIB: u64 = 2048;

/// rmachine-vmm's configuration for the guest image inside L1: the image's command line, the
/// disks L1 found by serial, the hybrid vsock socket the client uses, an entropy device.
fn image_vm_config(cmdline: &str) -> VmConfig {
    let disk = |id: &str, read_only: bool| DiskConfig {
        id: id.into(),
        path: format!("/run/rm-{id}").into(),
        read_only,
        slot: None,
    };
    VmConfig {
        vcpus: Some(1),
        memory_mib: Some(l2::L2_MEMORY_MIB),
        kernel: KernelConfig {
            path: "/l2/Image".into(),
            cmdline: Some(cmdline.into()),
            initrd: None,
        },
        cpu: None,
        serial: Some(SerialConfig {
            log_path: Some("/tmp/l2-console.log".into()),
            stdio: false,
        }),
        disks: vec![
            disk("root", true),
            disk("data", false),
            disk("config", true),
        ],
        vsock: Some(VsockConfig {
            guest_cid: l2::GUEST_CID,
            uds_path: l2::VSOCK_UDS.into(),
            slot: None,
        }),
        rng: Some(RngConfig::default()),
        net: None,
        balloon: None,
        filesystems: Vec::new(),
        api_socket: None,
        snapshot_dir: None,
        jail: None,
        extra_nets: Vec::new(),
    }
}

/// The arm64 guest image under rmachine-vmm in the arm64 L1: the agent answers `ping`, the
/// engine answers `GET /version`, the guest powers off when asked and the VMM exits 0.
/// Ignored by default: Docker's start in L2 runs under emulated EL2 on this host's 2 shared
/// cores (seen: agent `ping` 7.9-11.4 s after the VMM started, the engine's version at
/// 92-104 s, the test 105-130 s), too long for every CI run; run it with
/// `cargo nextest run -p rmachine-e2e --test nested_aarch64 --run-ignored all`.
#[test]
#[ignore = "105-130 s (Docker starting in L2 under emulated EL2); run with --run-ignored all"]
fn test_rmachine_vmm_boots_the_arm64_image_to_the_agent_under_nested_kvm() {
    let total = Instant::now();
    aarch64::require_qemu();
    let (manifest, image_dir) = image_of(Arch::Arm64);
    let guest_kernel = image_dir.join(&manifest.kernel.file);
    let busybox = busybox_of(Arch::Arm64);
    let vmm = aarch64::build_vmm();
    let client = aarch64::build_client();
    let cache = Paths::from_env()
        .expect("HOME or RMACHINE_CACHE is set")
        .cache()
        .join("nested-aarch64");

    let vm_json = serde_json::to_string_pretty(&image_vm_config(&manifest.kernel_cmdline))
        .expect("vm config to json");
    let env = format!(
        "CLIENT_TIMEOUT_S={CLIENT_TIMEOUT_S}\nSHUTDOWN_TIMEOUT_S={SHUTDOWN_TIMEOUT_S}\nVMM_LOG_LEVEL=info\n"
    );
    let mut l1_tree = aarch64::busybox_tree(&busybox);
    for (path, member) in [
        (
            "init",
            Member::Bytes(aarch64::L1_AGENT_INIT.as_bytes().to_vec(), 0o755),
        ),
        ("bin/rmachine-vmm", Member::Copy(vmm.clone(), 0o755)),
        (
            "bin/rmachine-nested-client",
            Member::Copy(client.clone(), 0o755),
        ),
        ("l2", Member::Dir),
        ("l2/Image", Member::Copy(guest_kernel.clone(), 0o644)),
        ("etc/nested", Member::Dir),
        (
            "etc/nested/vm.json",
            Member::Bytes(vm_json.into_bytes(), 0o644),
        ),
        ("etc/nested/env", Member::Bytes(env.into_bytes(), 0o644)),
    ] {
        l1_tree.push((path.to_string(), member));
    }
    let l1_root = aarch64::erofs(&cache, "l1-agent-root", &l1_tree);
    let dir = tempfile::tempdir().expect("temp dir");
    let (data, config_disk) = l2::write_disks(dir.path(), "nested-arm64", Vec::new());
    let prepared_s = total.elapsed().as_secs_f64();

    let log_dir = aarch64::log_dir(&build::target_dir());
    std::fs::create_dir_all(&log_dir).expect("create the log folder");
    let log = log_dir.join("l1-agent-console.log");
    let disk = |path: PathBuf, read_only: bool, serial: Option<&str>| Disk {
        path,
        read_only,
        serial: serial.map(str::to_string),
    };
    let make_cmd = || {
        aarch64::command(
            &guest_kernel,
            &[
                disk(l1_root.clone(), true, None),
                disk(image_dir.join(&manifest.rootfs.file), true, Some("rm-root")),
                disk(data.clone(), false, Some("rm-data")),
                disk(config_disk.clone(), true, Some("rm-config")),
            ],
            L1_AGENT_MEMORY_MIB,
            "",
        )
    };
    eprintln!(
        "nested-aarch64: image {}, L1 console in {}\nnested-aarch64: {:?}",
        manifest.version,
        log.display(),
        make_cmd()
    );
    let run = l1::run_again_if_frozen(make_cmd, L1_AGENT_TIMEOUT, &log);
    let o = l1::parse(&run.lines);
    let fmt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1}"));
    eprintln!(
        "nested-aarch64 image timings (s): prepare={prepared_s:.1} l1_boot={} vmm_start={} \
         l2_to_ping={} l2_to_docker_version={} l1_run={:.1} total={:.1}",
        fmt(o.l1_init_s),
        fmt(o.vmm_start_s),
        fmt(o.l2_ping_s),
        fmt(o.l2_docker_version_s),
        run.elapsed.as_secs_f64(),
        total.elapsed().as_secs_f64()
    );
    if !o.pass {
        panic!(
            "no NESTED PASS (timed out: {}); failures: {:?}\n\
             --- L1 console (last 40 lines) ---\n{}\n\
             --- L2 guest console (last 60 lines) ---\n{}\n\
             --- rmachine-vmm log (last 20 lines) ---\n{}\n\
             --- qemu stderr ---\n{}\n(full L1 console: {})",
            run.timed_out,
            o.failures,
            l1::tail(&run.lines, 40, |l| !l.starts_with("L2| ")
                && !l.starts_with("VMM| ")),
            l1::tail(&run.lines, 60, |l| l.starts_with("L2| ")),
            l1::tail(&run.lines, 20, |l| l.starts_with("VMM| ")),
            run.stderr,
            log.display()
        );
    }
    assert!(
        o.failures.is_empty(),
        "PASS with failures: {:?}",
        o.failures
    );
    assert!(
        o.l2_ping_s.is_some() && o.l2_docker_version_s.is_some(),
        "PASS without the client's timings: {o:?}"
    );
}

#[test]
fn test_image_vm_config_is_valid_for_the_vmm() {
    let config = image_vm_config("console=ttyAMA0 root=/dev/vda");
    let parsed = VmConfig::from_json(&serde_json::to_string(&config).unwrap()).unwrap();
    assert_eq!(parsed, config);
    let paths: Vec<PathBuf> = parsed.disks.iter().map(|d| d.path.clone()).collect();
    assert_eq!(
        paths,
        [
            PathBuf::from("/run/rm-root"),
            PathBuf::from("/run/rm-data"),
            PathBuf::from("/run/rm-config")
        ]
    );
    let init = aarch64::L1_AGENT_INIT;
    assert!(init.contains(l2::VSOCK_UDS) && init.contains("/tmp/l2-console.log"));
}

#[test]
fn test_vm_config_is_valid_for_the_vmm() {
    let config = vm_config();
    let json = serde_json::to_string(&config).unwrap();
    let parsed = VmConfig::from_json(&json).unwrap();
    assert_eq!(parsed, config);
    let paths: Vec<PathBuf> = parsed.disks.iter().map(|d| d.path.clone()).collect();
    assert_eq!(
        paths,
        [
            PathBuf::from("/l2/root.erofs"),
            PathBuf::from("/l2/data.img")
        ]
    );
    // The guest script checks what the test expects.
    assert!(aarch64::L2_INIT.contains("head -c 64 /dev/vdb"));
    assert!(aarch64::L2_INIT.contains("cat /etc/marker"));
}
