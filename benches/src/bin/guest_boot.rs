//! Guest image benchmark (foundation issue): boot to the agent's `ping` and to the engine
//! ready, under QEMU as the `qemu` driver runs it, beside the same kernel and root file
//! system booted with a plain shell init that only mounts and starts containerd and
//! dockerd. The difference is the agent's cost. Also the image sizes and the data disk
//! after a first boot, and the arm64 guest under software emulation (TCG) beside the amd64
//! guest under TCG in the same run: boot to ping and to the engine ready, and their ratio
//! (BENCH_ARM64=0 leaves that part out; without it the arm64 image must be installed).
//!
//! `cargo run --profile benchmark -p rmachine-bench --bin guest_boot` (BENCH_RUNS=5 by default).

use std::time::Duration;

use rmachine_bench::{median, report, secs};
use rmachine_e2e::{image, image_of, runtime, sparse_disk, Arch, Guest};
use rmachine_machine::accel::Accel;
use rmachine_protocol::control::Request;

const TIMEOUT: Duration = Duration::from_secs(300);

/// The plain init: what any VM-based Docker must do at least, no agent.
const SHELL_INIT: &str = r#"#!/bin/sh
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev 2>/dev/null
mkdir -p /dev/pts /dev/shm; mount -t devpts devpts /dev/pts; mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /run; mount -t tmpfs tmpfs /tmp; mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount -t ext4 /dev/vdb /mnt/data
mkdir -p /mnt/data/docker /mnt/data/containerd /mnt/data/log
mount --bind /mnt/data/docker /var/lib/docker
mount --bind /mnt/data/containerd /var/lib/containerd
mount --bind /mnt/data/log /var/log
echo SHELL-INIT-UP > /dev/console
containerd > /var/log/containerd.log 2>&1 &
until [ -S /run/containerd/containerd.sock ]; do sleep 0.05; done
dockerd --containerd=/run/containerd/containerd.sock -H unix:///run/docker.sock > /var/log/docker.log 2>&1 &
n=0
until docker -H unix:///run/docker.sock version > /dev/null 2>&1; do
  sleep 0.05; n=$((n+1))
  [ $n = 2000 ] && tail -20 /var/log/docker.log > /dev/console
done
echo DOCKERD-READY > /dev/console
exec sleep 100000
"#;

fn runs() -> usize {
    std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5)
}

/// Copies a data disk template, keeping it sparse.
fn copy_disk(template: &std::path::Path, to: &std::path::Path) {
    let status = std::process::Command::new("cp")
        .arg("--sparse=always")
        .arg(template)
        .arg(to)
        .status()
        .unwrap();
    assert!(status.success(), "copy data disk");
}

/// Boots the image of `arch` under TCG once to format a data disk template (returned
/// with that first boot's time to the engine ready).
fn tcg_template(
    rt: &tokio::runtime::Runtime,
    dir: &std::path::Path,
    arch: Arch,
) -> (std::path::PathBuf, Duration) {
    let template = dir.join(format!("data-template-{arch}.img"));
    sparse_disk(&template, 8);
    let warm = dir.join(format!("warm-{arch}"));
    std::fs::create_dir_all(&warm).unwrap();
    let mut g = Guest::boot_arch(&warm, &template, arch, Some(Accel::Tcg));
    let (first_engine, _) = g.wait_engine(rt, TIMEOUT);
    let _ = g.control(rt, Request::Shutdown { reboot: false });
    g.wait_exit(Duration::from_secs(120));
    (template, first_engine)
}

/// arm64 beside amd64, both under TCG, alternating, each from a formatted data disk.
fn arm64_vs_amd64_under_tcg(rt: &tokio::runtime::Runtime, dir: &std::path::Path) {
    let (arm64, _) = image_of(Arch::Arm64);
    let (amd64, _) = image_of(Arch::Amd64);
    let mut templates = Vec::new();
    for arch in [Arch::Amd64, Arch::Arm64] {
        let (template, first) = tcg_template(rt, dir, arch);
        templates.push((arch, template, first));
    }
    let mut samples: Vec<(Vec<Duration>, Vec<Duration>)> = vec![(vec![], vec![]); 2];
    for i in 0..runs() {
        for (k, (arch, template, _)) in templates.iter().enumerate() {
            let run_dir = dir.join(format!("tcg-{arch}-{i}"));
            std::fs::create_dir_all(&run_dir).unwrap();
            let data = run_dir.join("data.img");
            copy_disk(template, &data);
            let mut g = Guest::boot_arch(&run_dir, &data, *arch, Some(Accel::Tcg));
            samples[k].0.push(g.wait_ping(rt, TIMEOUT));
            samples[k].1.push(g.wait_engine(rt, TIMEOUT).0);
            eprintln!("run {i} {arch} under TCG done");
        }
    }
    let [(amd_ping, amd_engine), (arm_ping, arm_engine)] =
        [samples[0].clone(), samples[1].clone()].map(|(p, e)| (median(p), median(e)));
    println!(
        "# arm64 beside amd64, both under TCG (software emulation), images {} and {}, median of {}",
        arm64.version,
        amd64.version,
        runs()
    );
    report("amd64 under TCG: boot to ping", &secs(amd_ping), "peer");
    report(
        "amd64 under TCG: boot to engine ready",
        &secs(amd_engine),
        "peer",
    );
    report("arm64 under TCG: boot to ping", &secs(arm_ping), "");
    report(
        "arm64 under TCG: boot to engine ready",
        &secs(arm_engine),
        "",
    );
    report(
        "boot to ping, arm64 / amd64 under TCG",
        &format!("{:.2}x", arm_ping.as_secs_f64() / amd_ping.as_secs_f64()),
        "",
    );
    report(
        "engine ready, arm64 / amd64 under TCG",
        &format!(
            "{:.2}x",
            arm_engine.as_secs_f64() / amd_engine.as_secs_f64()
        ),
        "",
    );
    for (arch, _, first) in &templates {
        report(
            &format!("{arch} under TCG, first boot (formats the data disk): engine ready"),
            &secs(*first),
            "",
        );
    }
    report(
        "arm64 kernel (Image, uncompressed)",
        &format!("{:.1} MiB", arm64.kernel.size_bytes as f64 / 1048576.0),
        "",
    );
    report(
        "arm64 root filesystem (erofs, lz4hc)",
        &format!("{:.1} MiB", arm64.rootfs.size_bytes as f64 / 1048576.0),
        "",
    );
}

/// Allocated bytes of a (sparse) file.
fn allocated(path: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path)
        .map(|m| m.blocks() * 512)
        .unwrap_or(0)
}

fn main() {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("temp dir");
    let (manifest, _) = image();

    // A data disk formatted by a first boot, copied for every run so each starts alike.
    let template = dir.path().join("data-template.img");
    sparse_disk(&template, 8);
    let warm = dir.path().join("warm");
    std::fs::create_dir_all(&warm).unwrap();
    let mut g = Guest::boot(&warm, &template);
    let (first_engine, _) = g.wait_engine(&rt, TIMEOUT);
    let _ = g.control(&rt, Request::Shutdown { reboot: false });
    g.wait_exit(Duration::from_secs(120));
    drop(g);
    let data_after_first_boot = allocated(&template);

    let script = dir.path().join("init.sh");
    let mut bytes = SHELL_INIT.as_bytes().to_vec();
    bytes.resize(bytes.len().div_ceil(4096) * 4096, b'\n');
    std::fs::write(&script, bytes).unwrap();
    // The script's path is a bare word: the kernel passes it to init as an argument.
    let shell_cmdline =
        "console=ttyS0 root=/dev/vda ro rootfstype=erofs panic=-1 quiet loglevel=4 random.trust_cpu=on init=/bin/sh /dev/vdc";

    let (mut agent_ping, mut agent_engine, mut shell_up, mut shell_engine) =
        (vec![], vec![], vec![], vec![]);
    for i in 0..runs() {
        for variant in ["agent", "shell"] {
            let run_dir = dir.path().join(format!("{variant}-{i}"));
            std::fs::create_dir_all(&run_dir).unwrap();
            let data = run_dir.join("data.img");
            copy_disk(&template, &data);
            if variant == "agent" {
                let mut g = Guest::boot(&run_dir, &data);
                agent_ping.push(g.wait_ping(&rt, TIMEOUT));
                agent_engine.push(g.wait_engine(&rt, TIMEOUT).0);
            } else {
                let mut g =
                    Guest::boot_custom(&run_dir, &data, shell_cmdline, &script, String::new());
                shell_up.push(g.wait_console("SHELL-INIT-UP", TIMEOUT));
                shell_engine.push(g.wait_console("DOCKERD-READY", TIMEOUT));
            }
            eprintln!("run {i} {variant} done");
        }
    }
    let (ap, ae, su, se) = (
        median(agent_ping),
        median(agent_engine),
        median(shell_up),
        median(shell_engine),
    );
    println!(
        "# guest boot under QEMU ({}), image {}, median of {}",
        rmachine_machine::accel::choose().accel.as_str(),
        manifest.version,
        runs()
    );
    report("agent: boot to ping", &secs(ap), "");
    report("agent: boot to engine ready", &secs(ae), "");
    report("shell init: boot to init running", &secs(su), "peer");
    report("shell init: boot to engine ready", &secs(se), "peer");
    report(
        "engine ready, agent / shell init",
        &format!("{:.2}x", ae.as_secs_f64() / se.as_secs_f64()),
        &format!("agent cost {:+.3} s", ae.as_secs_f64() - se.as_secs_f64()),
    );
    report(
        "first boot (formats the data disk): engine ready",
        &secs(first_engine),
        "",
    );
    let mib = |b: u64| format!("{:.1} MiB", b as f64 / 1048576.0);
    report("kernel (bzImage)", &mib(manifest.kernel.size_bytes), "");
    report(
        "root filesystem (erofs, lz4hc)",
        &mib(manifest.rootfs.size_bytes),
        "",
    );
    report(
        "data disk after first boot (allocated)",
        &mib(data_after_first_boot),
        "8 GiB sparse",
    );
    if std::env::var("BENCH_ARM64").as_deref() != Ok("0") {
        arm64_vs_amd64_under_tcg(&rt, dir.path());
    }
}
