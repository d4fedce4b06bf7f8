//! Image pull benchmark: `rmachine image pull` of the installed guest image from a
//! registry on the loopback (Debian trixie's `docker-registry`) into an empty
//! `RMACHINE_HOME`, against `curl` fetching the same two blobs from the same registry in
//! the same run (the peer: the transfer alone, with no checking). The ratio is what the
//! pull's checks (digests while streaming, the index and manifest, the layers against the
//! image's manifest, fsync, the rename) cost over the bytes themselves. Also the push,
//! once, and a second push (every blob there already).
//!
//! `cargo run --profile benchmark -p rmachine-bench --bin image_pull` (BENCH_RUNS=5).

use std::process::Command;
use std::time::{Duration, Instant};

use rmachine_bench::{median, report, secs};
use rmachine_e2e::{image, HostRegistry, MachineEnv};

fn main() {
    rmachine_bench::build_rmachine();
    let runs = rmachine_bench::env_num("BENCH_RUNS", 5) as usize;
    let (manifest, _) = image();
    let registry = HostRegistry::start();
    let reference = format!("127.0.0.1:{}/bench/guest:1", registry.port);
    let source = MachineEnv::new();
    let push = |what: &str| {
        let t = Instant::now();
        source.rmachine_ok(&["image", "push", &reference, "--image", &manifest.version]);
        let took = t.elapsed();
        eprintln!("{what}: {took:?}");
        took
    };
    let first_push = push("push");
    let second_push = push("push again (blobs there)");

    let blobs = [&manifest.kernel, &manifest.rootfs];
    let bytes: u64 = blobs.iter().map(|a| a.size_bytes).sum();
    let (mut pulls, mut curls) = (Vec::new(), Vec::new());
    for i in 0..runs {
        let empty = MachineEnv::without_images();
        let t = Instant::now();
        empty.rmachine_ok(&["image", "pull", &reference]);
        let pull = t.elapsed();

        let scratch = tempfile::tempdir().expect("temp dir");
        let t = Instant::now();
        for artifact in blobs {
            let url = format!(
                "http://127.0.0.1:{}/v2/bench/guest/blobs/sha256:{}",
                registry.port, artifact.sha256
            );
            let out = scratch.path().join(&artifact.file);
            let status = Command::new("curl")
                .args(["-sf", "-o"])
                .arg(&out)
                .arg(&url)
                .status()
                .expect("run curl");
            assert!(status.success(), "curl {url}");
        }
        let curl = t.elapsed();
        eprintln!("run {i}: pull {pull:?}, curl {curl:?}");
        pulls.push(pull);
        curls.push(curl);
    }
    let (pull, curl) = (median(pulls), median(curls));
    let mib = bytes as f64 / 1048576.0;
    println!(
        "# image pull from a loopback registry, image {} ({mib:.1} MiB), median of {runs}",
        manifest.version
    );
    report("rmachine image pull", &secs(pull), &rate(mib, pull));
    report(
        "curl of the same blobs (peer)",
        &secs(curl),
        &rate(mib, curl),
    );
    report(
        "pull / curl",
        &format!("{:.2}×", pull.as_secs_f64() / curl.as_secs_f64()),
        "what checking and installing cost over the transfer",
    );
    report(
        "rmachine image push",
        &secs(first_push),
        &rate(mib, first_push),
    );
    report(
        "push again (every blob there)",
        &secs(second_push),
        "verify against the manifest, HEADs, two manifests",
    );
}

fn rate(mib: f64, took: Duration) -> String {
    format!("{:.0} MiB/s", mib / took.as_secs_f64())
}
