//! Take-over benchmark: `rmachine start` to the engine answering `_ping` on docker.sock
//! when the start takes over a VM left running by a host agent that was killed (`kill
//! -9`), against a cold boot of the same machine in the same run (the peer). Each run:
//! a cold start, the host agent killed, a start that takes the VM over, a stop.
//!
//! `cargo run --profile benchmark -p rmachine-bench --bin takeover` (BENCH_RUNS=5).

use std::path::Path;
use std::time::{Duration, Instant};

use rmachine_bench::{engine_ping, median, report, secs};
use rmachine_e2e::MachineEnv;

const M: &str = "bench";

/// `rmachine start` until docker.sock answers `_ping`.
fn start_to_ping(env: &MachineEnv, socket: &Path) -> Duration {
    let t = Instant::now();
    env.rmachine_ok(&["start", M, "--no-use"]);
    engine_ping(socket).expect("engine _ping after start");
    t.elapsed()
}

fn main() {
    rmachine_bench::build_rmachine();
    let env = MachineEnv::new();
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    env.rmachine_ok(&["create", M, "--driver", "qemu", "--disk", "8G"]);
    let socket = env.home.join("machines").join(M).join("docker.sock");
    let (mut cold, mut takeover) = (Vec::new(), Vec::new());
    for i in 0..runs {
        let c = start_to_ping(&env, &socket);
        assert_eq!(env.state(M)["start_kind"], "boot", "{}", env.state(M));
        let state = env.state(M);
        let (hostagent, vm) = (
            state["hostagent"]["pid"].as_u64().expect("host agent pid"),
            state["vm"]["pid"].as_u64().expect("VM pid"),
        );
        let killed = std::process::Command::new("kill")
            .args(["-9", &hostagent.to_string()])
            .status()
            .expect("run kill");
        assert!(killed.success(), "kill -9 {hostagent}");
        let t = start_to_ping(&env, &socket);
        let state = env.state(M);
        assert_eq!(state["start_kind"], "take_over", "{state}");
        assert_eq!(state["vm"]["pid"].as_u64(), Some(vm), "not the same VM");
        eprintln!("run {i}: cold {c:?}, take-over {t:?}");
        cold.push(c);
        takeover.push(t);
        env.rmachine_ok(&["stop", M]);
    }
    let (cold, takeover) = (median(cold), median(takeover));
    println!(
        "# take-over, backend qemu ({}), median of {runs}",
        rmachine_machine::accel::choose().accel.as_str()
    );
    report(
        "rmachine start to engine _ping, taking over a running VM",
        &secs(takeover),
        "after kill -9 of its host agent",
    );
    report(
        "rmachine start to engine _ping, cold boot",
        &secs(cold),
        "peer, same machine",
    );
    report(
        "take-over / cold boot",
        &format!("{:.3}x", takeover.as_secs_f64() / cold.as_secs_f64()),
        "",
    );
}
