//! Machine networks benchmark: TCP throughput and round-trip time from one machine to
//! another over a machine network (the guests' second NICs and the network's switch)
//! against the same transfer and pings over loopback inside one guest, measured in the
//! same run; and the switch's CPU time per GiB it forwarded.
//!
//! `cargo run --profile benchmark -p rmachine-bench --bin network`
//! (BENCH_RUNS=3 transfers each way of BENCH_MIB=64 MiB, 20 pings each).
//!
//! Both sides of a transfer run in containers on the guests' host network (busybox `nc`
//! fed by `dd`); each transfer is timed by the sending guest's own clock around the
//! transfer alone, so container start-up is not counted and a guest clock that runs at
//! another rate than the host's (software emulation) cancels in the ratio.

use std::time::Duration;

use rmachine_bench::{cpu_time, env_num, median, report};
use rmachine_e2e::{busybox_tarball, MachineEnv};

const IMG: &str = "bench/busybox:1";

fn docker_in(env: &MachineEnv, machine: &str, args: &[&str]) -> String {
    let context = format!("rmachine-{machine}");
    let mut all = vec!["--context", context.as_str()];
    all.extend(args);
    env.docker_ok(&all)
}

/// Starts a sink on `machine`'s host network that reads a connection on `port` to its end.
fn sink(env: &MachineEnv, machine: &str, name: &str, port: u16) {
    let _ = env.docker(
        &[
            "--context",
            &format!("rmachine-{machine}"),
            "rm",
            "-f",
            name,
        ],
        None,
        &[],
    );
    docker_in(
        env,
        machine,
        &[
            "run",
            "-d",
            "--name",
            name,
            "--network",
            "host",
            IMG,
            "sh",
            "-c",
            &format!("nc -l -p {port} > /dev/null"),
        ],
    );
}

/// Sends `mib` MiB from `machine` to `host:port`; the guest-clock time of the transfer.
fn send(env: &MachineEnv, machine: &str, host: &str, port: u16, mib: u64) -> Duration {
    // Retried until the sink listens (its container may still be starting).
    let script = format!(
        "for i in $(seq 1 100); do nc -z {host} {port} && break; sleep 0.2; done; \
         t0=$(cut -d' ' -f1 /proc/uptime); \
         dd if=/dev/zero bs=1048576 count={mib} 2>/dev/null | nc -w 10 {host} {port}; \
         t1=$(cut -d' ' -f1 /proc/uptime); echo \"$t0 $t1\""
    );
    let out = docker_in(
        env,
        machine,
        &["run", "--rm", "--network", "host", IMG, "sh", "-c", &script],
    );
    let line = out.lines().last().unwrap_or_default();
    let (t0, t1) = line
        .split_once(' ')
        .and_then(|(a, b)| Some((a.parse::<f64>().ok()?, b.parse::<f64>().ok()?)))
        .unwrap_or_else(|| panic!("no times from the sender: {out:?}"));
    Duration::from_secs_f64((t1 - t0).max(0.001))
}

/// The average round trip of 20 pings from `machine` to `host`, from busybox's summary.
fn ping(env: &MachineEnv, machine: &str, host: &str) -> Duration {
    let out = docker_in(
        env,
        machine,
        &[
            "run",
            "--rm",
            "--network",
            "host",
            IMG,
            "ping",
            "-c",
            "20",
            "-i",
            "0.2",
            host,
        ],
    );
    // "round-trip min/avg/max = 0.512/0.804/1.630 ms"
    let avg = out
        .lines()
        .find_map(|l| {
            l.split_once(" = ")
                .filter(|(k, _)| k.contains("min/avg/max"))
        })
        .and_then(|(_, v)| v.split('/').nth(1)?.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no ping summary: {out}"));
    Duration::from_secs_f64(avg / 1000.0)
}

fn main() {
    let runs = env_num("BENCH_RUNS", 3) as usize;
    let mib = env_num("BENCH_MIB", 64);
    let env = MachineEnv::new();
    env.rmachine_ok(&["network", "create", "lan"]);
    for m in ["n1", "n2"] {
        env.rmachine_ok(&[
            "create",
            m,
            "--driver",
            "qemu",
            "--cpus",
            "1",
            "--memory",
            "1G",
            "--disk",
            "8G",
            "--no-mounts",
            "--network",
            "lan",
        ]);
    }
    let inspect: serde_json::Value =
        serde_json::from_str(&env.rmachine_ok(&["network", "inspect", "lan"])).unwrap();
    let a2 = inspect["members"]["n2"].as_str().unwrap().to_string();
    let work = env.dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let tarball = busybox_tarball(&work);
    for m in ["n1", "n2"] {
        eprintln!("starting {m}");
        env.rmachine_ok(&["start", m, "--no-use"]);
        docker_in(&env, m, &["import", tarball.to_str().unwrap(), IMG]);
    }
    // The pid file holds the switch's process as JSON (its PID and start time).
    let switch: serde_json::Value = serde_json::from_slice(
        &std::fs::read(env.home.join("networks/lan/switch.pid"))
            .expect("the network's switch runs"),
    )
    .expect("the switch's pid file");
    let switch_pid = switch["pid"].as_u64().expect("the switch's pid") as u32;

    let (mut across, mut local) = (Vec::new(), Vec::new());
    let mut switch_cpu = Duration::ZERO;
    for run in 0..runs {
        eprintln!("run {}/{runs}", run + 1);
        // Interleaved: machine to machine, then loopback in n1.
        sink(&env, "n2", "sink", 5001);
        let before = cpu_time(switch_pid).expect("the switch's CPU time");
        across.push(send(&env, "n1", &a2, 5001, mib));
        switch_cpu += cpu_time(switch_pid).expect("the switch's CPU time") - before;
        sink(&env, "n1", "sink", 5002);
        local.push(send(&env, "n1", "127.0.0.1", 5002, mib));
    }
    let rtt_across = ping(&env, "n1", &a2);
    let rtt_local = ping(&env, "n1", "127.0.0.1");
    let across = median(across);
    let local = median(local);
    let rate = |d: Duration| mib as f64 / d.as_secs_f64();
    report(
        "TCP n1 -> n2 over the machine network",
        &format!("{:.1} MiB/s", rate(across)),
        &format!(
            "{:.2}x loopback's {:.1} MiB/s inside n1; median of {runs} × {mib} MiB, guest clock",
            rate(across) / rate(local),
            rate(local)
        ),
    );
    report(
        "round trip n1 -> n2",
        &format!("{:.3} ms", rtt_across.as_secs_f64() * 1000.0),
        &format!(
            "{:.1}x loopback's {:.3} ms; average of 20 pings",
            rtt_across.as_secs_f64() / rtt_local.as_secs_f64(),
            rtt_local.as_secs_f64() * 1000.0
        ),
    );
    let gib = (runs as u64 * mib) as f64 / 1024.0;
    report(
        "switch CPU per GiB forwarded",
        &format!("{:.2} s", switch_cpu.as_secs_f64() / gib),
        &format!(
            "{:.2} s for {runs} × {mib} MiB (frames both ways)",
            switch_cpu.as_secs_f64()
        ),
    );
    for m in ["n1", "n2"] {
        env.rmachine_ok(&["stop", m]);
    }
    env.rmachine_ok(&["rm", "n1", "n2"]);
    env.rmachine_ok(&["network", "rm", "lan"]);
}
