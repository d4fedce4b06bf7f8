//! Nested benchmark: inside the nested-KVM harness's L1 VM (Linux under QEMU's software
//! emulation, with a working `/dev/kvm` from emulated SVM), rmachine-vmm against QEMU
//! `-M microvm -enable-kvm -cpu host` booting the same guest: the same kernel and command line
//! (except the reset method: microvm has no i8042), the same three disks as virtio-mmio block
//! devices, one vCPU, 1 GiB, vsock and an entropy device, the console on the VMM's stdout.
//!
//! Each guest boot gets a fresh L1 boot (L1 boots in ~5 s): in one L1, every guest after the
//! first boots several times slower, whichever VMM runs it (measured: the agent's first line
//! after 3.5 s for the first guest, 17.5 s and 35.2 s for the next two, most of it before the
//! guest's clock starts); `BENCH_SAME_L1=1` runs both VMMs of a repetition in one L1 boot
//! instead. The order alternates between repetitions. Inside L1, `rmachine-nested-client`
//! starts the VMM and times it: the guest kernel booted to its init (the agent's first console
//! line, `rmachine-agent starting as PID 1`, and the guest clock stamped on it), the agent's
//! `ping`, and the engine ready (`GET /version` answered through the engine service; over
//! rmachine-vmm's hybrid vsock socket, over AF_VSOCK to QEMU's vhost-vsock). Then the guest
//! is powered off and the VMM must exit. Before powering the guest off, the client times two
//! workloads on a tree of 200 files in L1's `/share`: natively in L1 before the VMM starts,
//! and in the guest through virtio-fs (one virtiofsd per guest boot, `--cache never`; rmachine-vmm's
//! vhost-user frontend against QEMU's vhost-user-fs-device, the same virtiofsd). An untimed rmachine-vmm boot first formats the data
//! disk. Before each guest boot L1 reads the root disk into its page cache.
//!
//! `cargo run --profile benchmark -p rmachine-bench --bin nested` (BENCH_RUNS=5 repetitions
//! by default). L1 consoles are kept in `target/nested-bench/`; for a look inside,
//! BENCH_CONSOLE=1 copies each guest console into them and
//! RMACHINE_NESTED_L2_CMDLINE_EXTRA adds words to the guest command line (e.g. `loglevel=7`;
//! the figures then are not comparable).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rmachine_bench::median;
use rmachine_e2e::nested::l1::{self, BenchRun};
use rmachine_e2e::nested::l2::{self, Console};
use rmachine_e2e::nested::{build, initramfs, kernel, L1_INIT_BENCH};
use rmachine_machine::paths::Paths;

/// One L1 boot: both VMMs to the engine and back (and the first boot's warm-up).
const L1_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// The agent's first console line.
const INIT_MARKER: &str = "rmachine-agent starting as PID 1";
/// Where QEMU goes inside L1.
const QEMU_IN_L1: &str = "/usr/bin/qemu-system-x86_64";
/// The runs, as the L1 init and the client name them.
const VMM: &str = "rmachine-vmm";
const QEMU: &str = "qemu";
const WARMUP: &str = "warmup";
/// What is timed, as the client's `NESTED BENCH` line names it, and how the table says it.
const FIGURES: [(&str, &str); 4] = [
    (
        "init_s",
        "start to the guest's init (agent's first console line)",
    ),
    (
        "guest_init_s",
        "the guest's clock on that line (its kernel's boot)",
    ),
    ("ping_s", "start to the agent's ping"),
    ("engine_s", "start to the engine ready (`GET /version`)"),
];

/// The share workloads: the guest's key, the same workload's key natively in L1, and how the
/// table says it.
const SHARE_FIGURES: [(&str, &str, &str); 2] = [
    (
        "share_read_s",
        "native_read_s",
        "read every file of a tree (`find -exec cat`, 200 files of 4 KiB)",
    ),
    ("share_write_s", "native_write_s", "copy the tree (`cp -r`)"),
];

fn runs() -> usize {
    std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5)
}

fn seconds(run: &BenchRun, key: &str) -> Duration {
    Duration::from_secs_f64(run.seconds.get(key).copied().unwrap_or(f64::NAN).max(0.0))
}

fn main() {
    let total = Instant::now();
    let runs = runs();
    let (manifest, image_dir) = rmachine_e2e::image();
    l1::require_qemu();
    let qemu = l1::qemu_binary();
    let paths = Paths::from_env().expect("HOME or RMACHINE_CACHE is set");
    let cache = paths.cache().join("nested");
    let tools = build::tools();
    let kernel = kernel::l1_kernel(&cache);

    let extra = std::env::var("RMACHINE_NESTED_L2_CMDLINE_EXTRA").ok();
    let cmdline = l2::guest_cmdline(&manifest.kernel_cmdline, extra.as_deref());
    let vm_json = serde_json::to_string_pretty(&l2::vm_config(
        cmdline.clone(),
        Console::Stdout,
        Some(l2::l1_share()),
    ))
    .expect("vm config to json");
    let vmm_argv = [
        "/bin/rmachine-vmm",
        "--config",
        "/etc/nested/vm.json",
        "--log-file",
        "/tmp/vmm.log",
    ];
    let qemu_argv = l2::qemu_argv(QEMU_IN_L1, &cmdline, Some(&l2::l1_share()));
    let virtiofsd = rmachine_machine::host_tools::find_virtiofsd(&paths)
        .expect("no virtiofsd for L1's shared folder: run `rmachine setup`");
    let env = format!(
        "CLIENT_TIMEOUT_S=600\nSHUTDOWN_TIMEOUT_S=120\nRETRY_MS=200\nGUEST_CID={}\nVMM_LOG_LEVEL=info\nINIT_MARKER='{INIT_MARKER}'\nL2_SHARE_DIR={}\n",
        l2::GUEST_CID,
        l2::L2_SHARE_DIR
    );
    let initrd = initramfs::build(
        &cache,
        &initramfs::Inputs {
            name: "bench",
            init: L1_INIT_BENCH,
            kernel: &kernel,
            vmm: &tools.vmm,
            client: &tools.client,
            virtiofsd: Some(&virtiofsd),
            qemu: Some(&qemu),
            guest_kernel: &image_dir.join(&manifest.kernel.file),
            files: vec![
                ("vm.json".into(), vm_json),
                (format!("{VMM}.argv"), vmm_argv.join("\n") + "\n"),
                (format!("{QEMU}.argv"), qemu_argv.join("\n") + "\n"),
                ("env".into(), env),
            ],
            programs: vec![],
            extra: vec![],
        },
    );

    let dir = tempfile::tempdir().expect("temp dir");
    let (data, config_disk) =
        l2::write_disks(dir.path(), "nested-bench", vec![l2::l1_share_mount()]);
    let log_dir = build::target_dir().join("nested-bench");
    std::fs::create_dir_all(&log_dir).expect("create the log folder");
    eprintln!(
        "nested bench: image {}, L1 kernel {}, {} repetitions, prepared in {:.1}s; L1 consoles in {}",
        manifest.version,
        kernel.package,
        runs,
        total.elapsed().as_secs_f64(),
        log_dir.display()
    );

    // Each VMM boots in a fresh L1 by default: a second guest in the same L1 boots
    // several times slower (see the module doc), whichever VMM runs it.
    let same_l1 = std::env::var("BENCH_SAME_L1").is_ok_and(|v| v == "1");
    let console = u8::from(std::env::var("BENCH_CONSOLE").is_ok_and(|v| v == "1"));
    let mut boots: Vec<Vec<&str>> = vec![vec![WARMUP]];
    for rep in 0..runs {
        let order = if rep % 2 == 0 {
            [VMM, QEMU]
        } else {
            [QEMU, VMM]
        };
        if same_l1 {
            boots.push(order.to_vec());
        } else {
            boots.extend(order.iter().map(|label| vec![*label]));
        }
    }
    let mut samples: BTreeMap<&str, Vec<BenchRun>> = BTreeMap::new();
    let mut warmup = None;
    for (i, order) in boots.iter().enumerate() {
        let cmd = l1::command(
            &kernel.vmlinuz,
            &initrd,
            &l1::Disks {
                root: &image_dir.join(&manifest.rootfs.file),
                data: &data,
                config: &config_disk,
            },
            &format!(
                "rmbench.order={} rmbench.console={console}",
                order.join(",")
            ),
        );
        eprintln!(
            "nested bench: L1 boot {}/{}: {}",
            i + 1,
            boots.len(),
            order.join(", ")
        );
        let log = log_dir.join(format!("l1-console-{}.log", i + 1));
        let run = l1::run(cmd, L1_TIMEOUT, &log);
        let outcome = l1::parse(&run.lines);
        let bench = l1::parse_bench(&run.lines);
        let complete = order
            .iter()
            .all(|label| bench.iter().any(|b| b.label == *label));
        if !outcome.pass || !complete {
            let status = if run.timed_out {
                format!("L1 killed after {L1_TIMEOUT:?}")
            } else {
                "L1 exited".to_string()
            };
            panic!(
                "L1 boot {} ({}) failed ({status}); failures: {:?}\n\
                 --- L1 console (last 60 lines) ---\n{}\n--- qemu stderr ---\n{}\n\
                 (full L1 console: {})",
                i + 1,
                order.join(", "),
                outcome.failures,
                l1::tail(&run.lines, 60, |_| true),
                run.stderr,
                log.display()
            );
        }
        for b in bench {
            eprintln!(
                "nested bench: {:>12}: init {:.3} s (guest clock {:.3} s), ping {:.3} s, \
                 engine {:.3} s, exit {:.3} s; L1 ran {:.1} s",
                b.label,
                seconds(&b, "init_s").as_secs_f64(),
                seconds(&b, "guest_init_s").as_secs_f64(),
                seconds(&b, "ping_s").as_secs_f64(),
                seconds(&b, "engine_s").as_secs_f64(),
                seconds(&b, "exit_s").as_secs_f64(),
                run.elapsed.as_secs_f64()
            );
            match b.label.as_str() {
                WARMUP => warmup = Some(b),
                VMM => samples.entry(VMM).or_default().push(b),
                QEMU => samples.entry(QEMU).or_default().push(b),
                _ => {}
            }
        }
    }

    println!(
        "# rmachine-vmm vs QEMU -M microvm -enable-kvm inside L1 (nested KVM under TCG), image {}, median of {runs}",
        manifest.version
    );
    println!("| what | rmachine-vmm | QEMU microvm | rmachine-vmm / QEMU |");
    println!("| --- | --- | --- | --- |");
    for (key, what) in FIGURES {
        let med = |label: &str| median(samples[label].iter().map(|b| seconds(b, key)).collect());
        let (v, q) = (med(VMM), med(QEMU));
        println!(
            "| {what} | {:.3} s | {:.3} s | {:.2}× |",
            v.as_secs_f64(),
            q.as_secs_f64(),
            v.as_secs_f64() / q.as_secs_f64()
        );
    }
    for label in [VMM, QEMU] {
        for (key, _) in FIGURES {
            let all: Vec<String> = samples[label]
                .iter()
                .map(|b| format!("{:.3}", seconds(b, key).as_secs_f64()))
                .collect();
            println!("{label} {key}: {}", all.join(" "));
        }
    }
    println!();
    println!(
        "# A folder of L1 through virtio-fs (virtiofsd in L1, --cache never) against the same folder read natively in L1 (median of {runs}; % = native time / guest time)"
    );
    println!(
        "| workload | native in L1 | rmachine-vmm | QEMU microvm | rmachine-vmm % of native | QEMU % of native | rmachine-vmm / QEMU |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for (key, native_key, what) in SHARE_FIGURES {
        let med = |label: &str, key: &str| {
            median(samples[label].iter().map(|b| seconds(b, key)).collect()).as_secs_f64()
        };
        let native = median(
            [VMM, QEMU]
                .iter()
                .flat_map(|label| samples[label].iter().map(|b| seconds(b, native_key)))
                .collect(),
        )
        .as_secs_f64();
        let (v, q) = (med(VMM, key), med(QEMU, key));
        println!(
            "| {what} | {native:.3} s | {v:.3} s | {q:.3} s | {:.1} % | {:.1} % | {:.2}× |",
            100.0 * native / v,
            100.0 * native / q,
            v / q
        );
    }
    for label in [VMM, QEMU] {
        for (key, native_key, _) in SHARE_FIGURES {
            let all: Vec<String> = samples[label]
                .iter()
                .map(|b| {
                    format!(
                        "{:.3}/{:.3}",
                        seconds(b, key).as_secs_f64(),
                        seconds(b, native_key).as_secs_f64()
                    )
                })
                .collect();
            println!("{label} {key}/{native_key}: {}", all.join(" "));
        }
    }
    if let Some(w) = warmup {
        println!(
            "first boot (rmachine-vmm, formats the data disk): engine ready {:.3} s",
            seconds(&w, "engine_s").as_secs_f64()
        );
    }
    eprintln!(
        "nested bench: done in {:.1}s",
        total.elapsed().as_secs_f64()
    );
}
