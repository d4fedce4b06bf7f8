//! rmachine-vmm boots the real guest image on real KVM, nested: this machine's `/dev/kvm` (PVM)
//! cannot run a stock Linux kernel, but QEMU's software emulation (TCG) emulates AMD SVM, so
//! a Linux L1 VM under TCG gets a working `/dev/kvm` from kvm-amd and rmachine-vmm runs inside
//! it.
//!
//! The harness is `rmachine_e2e::nested` (shared with the nested benchmark). The host side
//! builds rmachine-vmm (gnu, with its shared libraries) and the static
//! `rmachine-nested-client` (musl), takes Debian's stock kernel and its KVM and virtio modules
//! (`kernel`), packs them with busybox, the guest kernel and the VMM's configuration into an
//! initramfs (`initramfs`, cached by content hash under `~/.cache/rmachine/nested/`), and boots
//! L1 under QEMU with the guest image's root filesystem, a fresh sparse data disk and a config
//! disk as virtio disks (`l1`). L1's init (`l1-init.sh`) runs rmachine-vmm on its /dev/vdX
//! disks and the client beside it: the agent must answer `ping` over the VMM's hybrid vsock
//! socket, the engine must answer `GET /version` with Docker 26 through the `engine` service,
//! the guest must read and write a folder of L1 shared through virtio-fs (a virtiofsd in L1
//! serving `/share`, mounted by the agent at `/home/nested-share`), and the guest must power off
//! cleanly when asked. L1 prints `NESTED PASS` or
//! `NESTED FAIL <why>`, the guest's console (`L2| `) and the VMM's log (`VMM| `).

mod machine;

use std::time::{Duration, Instant};

use rmachine_e2e::nested::l2::{self, Console};
use rmachine_e2e::nested::{build, initramfs, kernel, l1, L1_INIT_TEST, L1_SETUP};
use rmachine_machine::paths::Paths;
use vmm::config::VmConfig;

/// How long the client in L1 tries to reach the agent and the engine.
const CLIENT_TIMEOUT_S: u64 = 600;
/// How long the guest may take to power off once asked.
const SHUTDOWN_TIMEOUT_S: u64 = 120;
/// The whole L1 run, boot to power off.
const L1_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// Extra guest command-line words, for debugging (e.g. `loglevel=7`).
const L2_CMDLINE_EXTRA_ENV: &str = "RMACHINE_NESTED_L2_CMDLINE_EXTRA";

/// rmachine-vmm's configuration inside L1: the guest console in a file the init streams, and
/// L1's shared folder through the virtiofsd the init starts.
fn vm_config(cmdline: String) -> VmConfig {
    l2::vm_config(
        cmdline,
        Console::File("/tmp/l2-console.log".into()),
        Some(l2::l1_share()),
    )
}

/// The guest command line (see [`l2::guest_cmdline`]).
fn guest_cmdline(image_cmdline: &str, extra: Option<&str>) -> String {
    l2::guest_cmdline(image_cmdline, extra)
}

#[test]
fn test_rmachine_vmm_boots_the_guest_to_docker_under_nested_kvm() {
    let total = Instant::now();
    let (manifest, image_dir) = rmachine_e2e::image();
    l1::require_qemu();
    let cache = Paths::from_env()
        .expect("HOME or RMACHINE_CACHE is set")
        .cache()
        .join("nested");

    let tools = build::tools();
    let kernel = kernel::l1_kernel(&cache);
    let paths = Paths::from_env().expect("HOME or RMACHINE_HOME is set");
    let virtiofsd = rmachine_machine::host_tools::find_virtiofsd(&paths)
        .expect("no virtiofsd for L1's shared folder: run `rmachine setup`");

    let cmdline = guest_cmdline(
        &manifest.kernel_cmdline,
        std::env::var(L2_CMDLINE_EXTRA_ENV).ok().as_deref(),
    );
    let vm_json = serde_json::to_string_pretty(&vm_config(cmdline)).expect("vm config to json");
    let env = format!(
        "CLIENT_TIMEOUT_S={CLIENT_TIMEOUT_S}\nSHUTDOWN_TIMEOUT_S={SHUTDOWN_TIMEOUT_S}\nVMM_LOG_LEVEL=info\nL2_SHARE_DIR={}\n",
        l2::L2_SHARE_DIR
    );
    let target = build::target_dir();
    let initrd = initramfs::build(
        &cache,
        &initramfs::Inputs {
            name: "test",
            init: L1_INIT_TEST,
            kernel: &kernel,
            vmm: &tools.vmm,
            client: &tools.client,
            virtiofsd: Some(&virtiofsd),
            qemu: None,
            guest_kernel: &image_dir.join(&manifest.kernel.file),
            files: vec![("vm.json".into(), vm_json), ("env".into(), env)],
            programs: vec![],
            extra: vec![],
        },
    );
    let prepared_s = total.elapsed().as_secs_f64();

    let dir = tempfile::tempdir().expect("temp dir");
    let (data, config_disk) = l2::write_disks(dir.path(), "nested", vec![l2::l1_share_mount()]);

    let log_dir = l1::log_dir(&target);
    std::fs::create_dir_all(&log_dir).expect("create the log folder");
    let log = log_dir.join("l1-console.log");
    let make_cmd = || {
        l1::command(
            &kernel.vmlinuz,
            &initrd,
            &l1::Disks {
                root: &image_dir.join(&manifest.rootfs.file),
                data: &data,
                config: &config_disk,
            },
            "",
        )
    };
    eprintln!(
        "nested: image {}, L1 kernel {}, L1 console in {}\nnested: {:?}",
        manifest.version,
        kernel.package,
        log.display(),
        make_cmd()
    );
    let run = l1::run_again_if_frozen(make_cmd, L1_TIMEOUT, &log);
    let o = l1::parse(&run.lines);

    let fmt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1}"));
    eprintln!(
        "nested timings (s): prepare={prepared_s:.1} l1_boot={} vmm_start={} \
         l2_to_ping={} l2_to_docker_version={} l2_share={} l1_run={:.1} total={:.1}",
        fmt(o.l1_init_s),
        fmt(o.vmm_start_s),
        fmt(o.l2_ping_s),
        fmt(o.l2_docker_version_s),
        fmt(o.l2_share_s),
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
             --- L2 guest console (last 60 lines) ---\n{}\n\
             --- rmachine-vmm log (last 20 lines) ---\n{}\n\
             --- qemu stderr ---\n{}\n(full L1 console: {})",
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
        o.l2_ping_s.is_some() && o.l2_docker_version_s.is_some() && o.l2_share_s.is_some(),
        "PASS without the client's timings: {o:?}"
    );
}

#[test]
fn test_guest_cmdline_adds_reset_and_rtc_blacklist_once() {
    assert_eq!(
        guest_cmdline("console=ttyS0 quiet", None),
        "console=ttyS0 quiet reboot=k initcall_blacklist=cmos_init,early_resume_init"
    );
    let image = "console=ttyS0 initcall_blacklist=cmos_init,early_resume_init";
    assert_eq!(
        guest_cmdline(image, Some(" loglevel=7 ")),
        format!("{image} reboot=k loglevel=7")
    );
}

#[test]
fn test_vm_config_is_valid_for_the_vmm() {
    let config = vm_config("console=ttyS0".into());
    let json = serde_json::to_string(&config).unwrap();
    let parsed = VmConfig::from_json(&json).unwrap();
    assert_eq!(parsed, config);
    let ids: Vec<&str> = parsed.disks.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(ids, ["root", "data", "config"]);
    assert!(parsed.disks[0].read_only && !parsed.disks[1].read_only && parsed.disks[2].read_only);
    // The init script streams exactly these files and hands the client this socket.
    let init = L1_INIT_TEST;
    assert!(init.contains("/tmp/l2-console.log") && init.contains("--uds /run/vsock.sock"));
    assert!(init.contains("/etc/nested/vm.json"));
    assert_eq!(parsed.filesystems.len(), 1);
    assert!(init.contains("start_virtiofsd /share"));
    assert!(L1_SETUP.contains(&format!("--socket-path {}", l2::VIRTIOFSD_SOCKET)));
    assert!(init.contains("--share-dir \"$L2_SHARE_DIR\""));
}
