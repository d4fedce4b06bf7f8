//! `rmachine` with the vmm driver, for real, nested: L1 gets the `rmachine` binary (with
//! rmachine-vmm beside it), the guest image (its root filesystem is L1's disk `rm-root`), and
//! the virtiofsd and passt bundles of `rmachine setup`, in `RMACHINE_HOME`/`RMACHINE_CACHE`
//! folders of its own. Its init (`l1-machine.sh`) creates and starts a machine with a shared
//! folder as a user would on hardware KVM; the host agent boots the guest under rmachine-vmm
//! with virtiofsd and passt. The nested client then checks the agent over the machine's hybrid
//! vsock socket, the shared folder both ways, the engine through the host agent's
//! docker.sock, and a published port: a web server container (imported from L1's busybox)
//! publishes 127.0.0.1:18080 in L1, which the host agent forwards over vsock's dial service;
//! `rmachine shell` and `rmachine cp` through the exec service; a container's outbound
//! connection through passt to L1's loopback (as 10.0.2.2); `rmachine stop` must stop the
//! machine.

use std::time::{Duration, Instant};

use rmachine_e2e::nested::cpio::Entry;
use rmachine_e2e::nested::{build, initramfs, kernel, l1};
use rmachine_machine::paths::Paths;

/// The shared folder in L1, which the guest mounts at the same path (its first component
/// exists in the image).
const SHARE: &str = "/home/share";
/// Where L1 keeps rmachine's state and caches.
const L1_HOME: &str = "opt/rmhome";
const L1_CACHE: &str = "opt/rmcache";
/// The whole L1 run (up to three when L1 freezes: `l1::FROZEN_RERUNS`).
const L1_TIMEOUT: Duration = Duration::from_secs(28 * 60);

fn file(path: &str, data: impl Into<Vec<u8>>) -> Entry {
    Entry::file(path, 0o644, data.into())
}

#[test]
fn test_rmachine_start_with_the_vmm_driver_under_nested_kvm() {
    let total = Instant::now();
    let (manifest, image_dir) = rmachine_e2e::image();
    l1::require_qemu();
    let paths = Paths::from_env().expect("HOME or RMACHINE_HOME is set");
    let cache = paths.cache().join("nested");
    let tools = build::tools();
    build::cargo_build(&["-p", "rmachine"], "");
    let rmachine = build::target_dir().join("release/rmachine");
    let kernel = kernel::l1_kernel(&cache);
    let bundle = |name: &str, tool: Option<rmachine_machine::host_tools::HostTool>| {
        let tool = tool.unwrap_or_else(|| panic!("no {name} bundle: run `rmachine setup`"));
        initramfs::bundle_entries(
            &tool,
            &paths.cache().join("host-tools").join(name),
            &format!("{L1_CACHE}/host-tools/{name}"),
        )
    };
    let image = format!("{L1_HOME}/images/{}", manifest.version);
    let mut extra = vec![
        file(
            "etc/passwd",
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
        ),
        file("etc/group", "root:x:0:\nnogroup:x:65534:\n"),
        file(
            &format!("{image}/manifest.json"),
            std::fs::read(image_dir.join("manifest.json")).unwrap(),
        ),
        file(
            &format!("{image}/{}", manifest.kernel.file),
            std::fs::read(image_dir.join(&manifest.kernel.file)).unwrap(),
        ),
    ];
    extra.extend(bundle(
        "virtiofsd",
        rmachine_machine::host_tools::find_virtiofsd(&paths),
    ));
    extra.extend(bundle(
        "passt",
        rmachine_machine::host_tools::find_passt(&paths),
    ));
    let env = format!(
        "CLIENT_TIMEOUT_S=600\nSHARE={SHARE}\nIMAGE_VERSION={}\nL2_MEMORY_MIB={}\n",
        manifest.version,
        rmachine_e2e::nested::l2::L2_MEMORY_MIB
    );
    let initrd = initramfs::build(
        &cache,
        &initramfs::Inputs {
            name: "machine",
            init: include_str!("l1-machine.sh"),
            kernel: &kernel,
            vmm: &tools.vmm,
            client: &tools.client,
            virtiofsd: None,
            qemu: None,
            guest_kernel: &image_dir.join(&manifest.kernel.file),
            files: vec![("env".into(), env)],
            programs: vec![("bin/rmachine".into(), rmachine)],
            extra,
        },
    );
    let prepared_s = total.elapsed().as_secs_f64();

    // L1's setup waits for three disks; the machine makes its own data and config disks.
    let dir = tempfile::tempdir().expect("temp dir");
    let (data, config) = (
        dir.path().join("unused-data.img"),
        dir.path().join("unused-config.img"),
    );
    for f in [&data, &config] {
        std::fs::write(f, vec![0u8; 4096]).unwrap();
    }
    let log_dir = l1::log_dir(&build::target_dir());
    std::fs::create_dir_all(&log_dir).expect("create the log folder");
    let log = log_dir.join("l1-machine-console.log");
    let make_cmd = || {
        l1::command(
            &kernel.vmlinuz,
            &initrd,
            &l1::Disks {
                root: &image_dir.join(&manifest.rootfs.file),
                data: &data,
                config: &config,
            },
            "",
        )
    };
    eprintln!(
        "nested machine: image {}, L1 console in {}",
        manifest.version,
        log.display()
    );
    let run = l1::run_again_if_frozen(make_cmd, L1_TIMEOUT, &log);
    let o = l1::parse(&run.lines);
    let at = |needle: &str| {
        run.lines
            .iter()
            .find(|(_, l)| l.contains(needle))
            .map(|(t, _)| *t)
    };
    let fmt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1}"));
    eprintln!(
        "nested machine timings (s): prepare={prepared_s:.1} l1_boot={} start_begins={} running={} stopped={} l1_run={:.1}",
        fmt(o.l1_init_s),
        fmt(at("NESTED L1 rmachine start")),
        fmt(at("NESTED L1 machine running")),
        fmt(at("NESTED L1 machine stopped")),
        run.elapsed.as_secs_f64(),
    );
    for (_, line) in run
        .lines
        .iter()
        .filter(|(_, l)| l.contains("NESTED STATUS") || l.contains("NESTED TIMING"))
    {
        eprintln!("{line}");
    }
    assert!(
        o.pass && o.failures.is_empty(),
        "no NESTED PASS (timed out: {}); failures: {:?}\n--- L1 console (last 120 lines) ---\n{}\n--- qemu stderr ---\n{}\n(full L1 console: {})",
        run.timed_out,
        o.failures,
        l1::tail(&run.lines, 120, |_| true),
        run.stderr,
        log.display()
    );
    assert!(
        run.lines.iter().any(|(_, l)| l.contains("docker_sock_s=")),
        "PASS without the docker.sock check"
    );
    assert!(
        run.lines
            .iter()
            .any(|(_, l)| l.contains("published_port_s=")),
        "PASS without the published-port check"
    );
    assert!(
        at("NESTED L1 rmachine cp both ways").is_some(),
        "PASS without the shell and cp checks"
    );
    assert!(
        at("NESTED L1 a container reached L1's loopback through passt").is_some(),
        "PASS without the outbound check"
    );
}
