//! Shared folders benchmark: a ~20,000-file source tree (directories of the guest
//! kernel's source, from the image build cache) untarred (write-heavy), then walked with
//! `find` and every file read (read-heavy), in one run on three places: natively on the
//! host, on a virtio-fs bind mount in a container, and in a container volume inside the
//! guest. Ratios against native.
//!
//! `cargo run --profile benchmark -p rmachine-bench --bin shares` (BENCH_RUNS=3).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use rmachine_bench::{median, report, secs};
use rmachine_e2e::{busybox_tarball, MachineEnv};

const M: &str = "benchfs";
/// Directories of the kernel source that together hold about 20,000 files.
const DIRS: &[&str] = &["include", "drivers/net", "net", "fs", "kernel", "mm", "lib"];

fn sh(script: &str) -> Duration {
    let t = Instant::now();
    let status = Command::new("sh")
        .arg("-c")
        .arg(script)
        .status()
        .expect("run sh");
    assert!(status.success(), "{script} failed");
    t.elapsed()
}

fn main() {
    rmachine_bench::build_rmachine();
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let paths = rmachine_machine::paths::Paths::from_env().expect("paths");
    // The image builder keeps the kernel source tree under `kernel/` in the cache.
    let src = std::fs::read_dir(paths.cache().join("kernel"))
        .expect("kernel build cache (run `rmachine image build` first)")
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("src-"))
                && p.join("Makefile").exists()
        })
        .expect("a kernel source tree in the build cache");

    let env = MachineEnv::new();
    let share = env.dir.path().join("share");
    std::fs::create_dir_all(&share).unwrap();
    let tarball = share.join("tree.tar");
    let mut tar = Command::new("tar");
    tar.arg("-C").arg(&src).arg("-cf").arg(&tarball).args(DIRS);
    assert!(tar.status().unwrap().success(), "tar the source tree");

    // Native.
    let native = env.dir.path().join("native");
    let (mut native_write, mut native_read) = (vec![], vec![]);
    for _ in 0..runs {
        let _ = std::fs::remove_dir_all(&native);
        std::fs::create_dir_all(&native).unwrap();
        sh("sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true");
        native_write.push(sh(&format!(
            "tar -xf {} -C {}",
            tarball.display(),
            native.display()
        )));
        sh("sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true");
        native_read.push(sh(&format!(
            "cd {} && find . -type f -exec cat {{}} + > /dev/null",
            native.display()
        )));
    }

    let files = String::from_utf8(
        Command::new("sh")
            .arg("-c")
            .arg(format!("find {} -type f | wc -l", native.display()))
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    eprintln!(
        "native: untar {:?}, find+read {:?}, {} files",
        median(native_write.clone()),
        median(native_read.clone()),
        files.trim()
    );

    // In the guest: one long-running container with the share and a volume.
    let share_s = share.to_str().unwrap();
    env.rmachine_ok(&[
        "create", M, "--driver", "qemu", "--disk", "8G", "--mount", share_s,
    ]);
    env.rmachine_ok(&["start", M]);
    let work = env.dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    env.docker_ok(&[
        "import",
        busybox_tarball(&work).to_str().unwrap(),
        "bench/busybox:1",
    ]);
    let c = env.docker_ok(&[
        "run",
        "-d",
        "-v",
        &format!("{share_s}:/s"),
        "-v",
        "benchvol:/vol",
        "bench/busybox:1",
        "sleep",
        "100000",
    ]);
    let c = c.trim().to_string();
    let exec = |script: &str| -> Duration {
        let t = Instant::now();
        env.docker_ok(&["exec", &c, "sh", "-c", script]);
        t.elapsed()
    };
    let overhead = median((0..5).map(|_| exec("true")).collect());
    let timed = |script: &str| exec(script).saturating_sub(overhead);
    let (mut fs_write, mut fs_read, mut vol_write, mut vol_read) = (vec![], vec![], vec![], vec![]);
    for _ in 0..runs {
        exec("rm -rf /s/t /vol/t; mkdir -p /s/t /vol/t");
        fs_write.push(timed("tar -xf /s/tree.tar -C /s/t"));
        exec("sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true");
        fs_read.push(timed(
            "cd /s/t && find . -type f -exec cat {} + > /dev/null",
        ));
        vol_write.push(timed("tar -xf /s/tree.tar -C /vol/t"));
        exec("sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true");
        vol_read.push(timed(
            "cd /vol/t && find . -type f -exec cat {} + > /dev/null",
        ));
        eprintln!(
            "virtio-fs: untar {:?}, find+read {:?}; volume: untar {:?}, find+read {:?}",
            fs_write.last(),
            fs_read.last(),
            vol_write.last(),
            vol_read.last()
        );
    }
    let guest_count = env.docker_ok(&["exec", &c, "sh", "-c", "find /s/t -type f | wc -l"]);
    assert_eq!(
        guest_count.trim(),
        files.trim(),
        "the tree differs between host and guest"
    );
    env.docker_ok(&["rm", "-f", &c]);
    env.rmachine_ok(&["stop", M]);
    assert!(Path::new(&share).join("t").exists());

    let (nw, nr, fw, fr, vw, vr) = (
        median(native_write),
        median(native_read),
        median(fs_write),
        median(fs_read),
        median(vol_write),
        median(vol_read),
    );
    println!(
        "# shared folders, {} files, backend qemu ({}), median of {runs}",
        files.trim(),
        rmachine_machine::accel::choose().accel.as_str()
    );
    report("native: untar", &secs(nw), "peer");
    report("native: find + read all", &secs(nr), "peer");
    report("virtio-fs bind: untar", &secs(fw), "");
    report("virtio-fs bind: find + read all", &secs(fr), "");
    report("container volume: untar", &secs(vw), "");
    report("container volume: find + read all", &secs(vr), "");
    let pct = |native: Duration, other: Duration| {
        format!(
            "{:.1} %",
            100.0 * native.as_secs_f64() / other.as_secs_f64()
        )
    };
    report(
        "virtio-fs reads vs native",
        &pct(nr, fr),
        "target >= 75 % on hardware KVM",
    );
    report("virtio-fs writes vs native", &pct(nw, fw), "");
    report(
        "volume reads vs native",
        &pct(nr, vr),
        "the guest's own disk",
    );
    report("volume writes vs native", &pct(nw, vw), "");
    report("docker exec overhead (subtracted)", &secs(overhead), "");
}
