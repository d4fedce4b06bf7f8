//! Machines benchmark: `rmachine start` to the engine answering `_ping` (cold boot), the
//! same after `rmachine stop` saved the machine (resume, with the ratio to the cold boot),
//! the Engine API round trip through the host agent's docker.sock against a direct
//! forward of the guest's engine service, published-port throughput host → container
//! against host loopback, and the host agent's RSS and CPU while idle.
//!
//! `cargo run --profile benchmark -p rmachine-bench --bin machine`
//! (BENCH_RUNS=5 starts of each kind, BENCH_IDLE_SECS=60, BENCH_MIB=128 per transfer;
//! BENCH_RESUME_ONLY=1 stops after the cold boots and resumes).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rmachine_bench::{cpu_time, engine_ping, env_num, median, report, rss_kib, secs};
use rmachine_e2e::{busybox_tarball, free_local_port, runtime, MachineEnv};
use rmachine_machine::guest_link::Carrier;
use rmachine_protocol::Service;

const M: &str = "bench";

/// `GET /version` round trips on fresh connections; the median.
fn version_round_trips(socket: &Path, n: usize) -> Duration {
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let mut s = UnixStream::connect(socket).expect("connect");
        s.write_all(b"GET /version HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).unwrap();
        assert!(
            out.starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&out)
        );
        samples.push(t.elapsed());
    }
    median(samples)
}

/// Sends `bytes` to 127.0.0.1:port and waits for the peer to close; returns MiB/s.
fn upload(port: u16, bytes: u64) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut s = loop {
        match std::net::TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => break s,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("connect to {port}: {e}"),
        }
    };
    let chunk = vec![0x5au8; 256 * 1024];
    let t = Instant::now();
    let mut sent = 0;
    while sent < bytes {
        let n = chunk.len().min((bytes - sent) as usize);
        s.write_all(&chunk[..n]).expect("upload");
        sent += n as u64;
    }
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    bytes as f64 / 1048576.0 / t.elapsed().as_secs_f64()
}

fn main() {
    rmachine_bench::build_rmachine();
    let env = MachineEnv::new();
    let runs = env_num("BENCH_RUNS", 5) as usize;
    // No shared folder: QEMU 7.2 cannot save a VM with one (the resume part needs it).
    env.rmachine_ok(&[
        "create",
        M,
        "--driver",
        "qemu",
        "--disk",
        "8G",
        "--no-mounts",
    ]);

    // 1. rmachine start → engine _ping, cold boots.
    let socket = env.home.join("machines").join(M).join("docker.sock");
    let mut starts = Vec::new();
    // Each start's steps (`start_phases`): name → milliseconds, per run.
    let mut phases: Vec<(String, Vec<u64>)> = Vec::new();
    for i in 0..runs {
        let t = Instant::now();
        env.rmachine_ok(&["start", M]);
        engine_ping(&socket).expect("engine _ping after start");
        starts.push(t.elapsed());
        eprintln!("start {i}: {:?}", t.elapsed());
        let state = env.state(M);
        for p in state["start_phases"].as_array().into_iter().flatten() {
            let (Some(name), Some(ms)) = (p["name"].as_str(), p["ms"].as_u64()) else {
                continue;
            };
            match phases.iter_mut().find(|(n, _)| n == name) {
                Some((_, all)) => all.push(ms),
                None => phases.push((name.to_string(), vec![ms])),
            }
        }
        if i + 1 < runs {
            // A full shutdown: the next start boots cold.
            env.rmachine_ok(&["stop", "--no-save", M]);
        }
    }

    // 1b. The same machine saved by `rmachine stop`, then `rmachine start` → engine
    // _ping: resumes.
    let mut saves = Vec::new();
    let mut resumes = Vec::new();
    let mut sizes = Vec::new();
    let mut resume_ms = Vec::new();
    for i in 0..runs {
        let t = Instant::now();
        env.rmachine_ok(&["stop", M]);
        saves.push(t.elapsed());
        let stopped = env.state(M);
        assert_eq!(stopped["last_stop"]["saved"], true, "not saved: {stopped}");
        sizes.push(stopped["last_stop"]["size_bytes"].as_u64().unwrap_or(0));
        let t = Instant::now();
        env.rmachine_ok(&["start", M]);
        engine_ping(&socket).expect("engine _ping after the resume");
        resumes.push(t.elapsed());
        let state = env.state(M);
        assert_eq!(state["start_kind"], "resume", "not resumed: {state}");
        resume_ms.push(Duration::from_millis(
            state["resume_ms"].as_u64().unwrap_or(0),
        ));
        eprintln!("save {i}: {:?}; resume {i}: {:?}", saves[i], resumes[i]);
    }
    let cold = median(starts.clone());
    let resumed = median(resumes.clone());
    let save_report = || {
        report(
            "rmachine start to engine _ping (resume of a saved machine)",
            &secs(resumed),
            &format!(
                "{:.2}x the cold boot of the same machine; VM running again after {}",
                resumed.as_secs_f64() / cold.as_secs_f64(),
                secs(median(resume_ms.clone()))
            ),
        );
        report(
            "rmachine stop (save)",
            &secs(median(saves.clone())),
            &format!("state {} MiB", sizes.iter().max().unwrap_or(&0) >> 20),
        );
    };
    if std::env::var_os("BENCH_RESUME_ONLY").is_some() {
        env.rmachine_ok(&["stop", "--no-save", M]);
        println!(
            "# machines, backend qemu ({}), median of {runs}",
            rmachine_machine::accel::choose().accel.as_str()
        );
        report("rmachine start to engine _ping (cold)", &secs(cold), "");
        save_report();
        return;
    }

    println!("start phases (median of {runs} starts; seconds since the host agent began):");
    let mut table: Vec<(u64, &str)> = phases
        .iter_mut()
        .map(|(name, all)| {
            all.sort_unstable();
            (all[all.len() / 2], name.as_str())
        })
        .collect();
    table.sort_unstable();
    let mut before = 0;
    for (ms, name) in table {
        println!(
            "  {:>7.2} s {:>+7.2} s  {name}",
            ms as f64 / 1000.0,
            (ms as f64 - before as f64) / 1000.0
        );
        before = ms;
    }

    // 2. API round trip: host agent socket vs. a direct forward of the engine service.
    let state = env.state(M);
    let carrier: Carrier =
        serde_json::from_value(state["carrier"].clone()).expect("carrier in state.json");
    let rt = runtime();
    let direct = env.dir.path().join("direct.sock");
    let endpoint = rmachine_machine::sys::local_socket::Endpoint::Unix(direct.clone());
    let listener = rt
        .block_on(async { rmachine_machine::sys::local_socket::LocalListener::bind(&endpoint) })
        .unwrap();
    rt.spawn(rmachine_machine::forward::serve(
        listener,
        Arc::new(carrier),
        Service::Engine,
    ));
    let n = env_num("BENCH_REQUESTS", 100) as usize;
    version_round_trips(&socket, 5);
    let via_agent = version_round_trips(&socket, n);
    let via_direct = version_round_trips(&direct, n);

    // 3. Published-port upload throughput vs. host loopback.
    let mib = env_num("BENCH_MIB", 128);
    let work = env.dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let tarball = busybox_tarball(&work);
    env.docker_ok(&["import", tarball.to_str().unwrap(), "bench/busybox:1"]);
    let port = free_local_port();
    env.docker_ok(&[
        "run",
        "-d",
        "--name",
        "sink",
        "-p",
        &format!("127.0.0.1:{port}:9000"),
        "bench/busybox:1",
        "sh",
        "-c",
        "while true; do nc -l -p 9000 > /dev/null; done",
    ]);
    std::thread::sleep(Duration::from_secs(2));
    let published = upload(port, mib << 20);
    let sink = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let loop_port = sink.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in sink.incoming().flatten() {
            let mut c = conn;
            let mut buf = vec![0u8; 256 * 1024];
            while matches!(c.read(&mut buf), Ok(n) if n > 0) {}
        }
    });
    let loopback = upload(loop_port, mib << 20);
    env.docker_ok(&["rm", "-f", "sink"]);

    // 4. Host agent idle RSS and CPU.
    let idle = Duration::from_secs(env_num("BENCH_IDLE_SECS", 60));
    let pid = env.state(M)["hostagent"]["pid"]
        .as_u64()
        .expect("hostagent pid") as u32;
    let vm_pid = env.state(M)["vm"]["pid"].as_u64().map(|p| p as u32);
    let cpu0 = cpu_time(pid).unwrap();
    let vm_cpu0 = vm_pid.and_then(cpu_time);
    std::thread::sleep(idle);
    let cpu = cpu_time(pid).unwrap() - cpu0;
    let rss = rss_kib(pid).unwrap();
    let vm_cpu = vm_pid.and_then(cpu_time).zip(vm_cpu0).map(|(a, b)| a - b);

    // 5. Memory given back: the VM process's RSS before a container fills 768 MiB of
    // guest memory, at its peak, and after it exits (free page reporting gives the freed
    // pages back to the host).
    let vm_pid = vm_pid.expect("vm pid");
    let rss_before = rss_kib(vm_pid).unwrap();
    env.docker_ok(&[
        "run",
        "--rm",
        "--shm-size",
        "800m",
        "bench/busybox:1",
        "sh",
        "-c",
        "head -c 805306368 /dev/zero > /dev/shm/fill && sync && rm /dev/shm/fill",
    ]);
    let rss_peak = rss_kib(vm_pid).unwrap();
    let settle = Instant::now();
    let mut rss_after = rss_peak;
    while settle.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_secs(2));
        let now = rss_kib(vm_pid).unwrap();
        if now + 1024 >= rss_after && now < rss_peak {
            rss_after = now;
            break;
        }
        rss_after = now;
    }
    env.rmachine_ok(&["stop", "--no-save", M]);

    println!(
        "# machines, backend qemu ({}), median of {runs}",
        rmachine_machine::accel::choose().accel.as_str()
    );
    report("rmachine start to engine _ping (cold)", &secs(cold), "");
    save_report();
    report(
        "GET /version via host agent docker.sock",
        &secs(via_agent),
        &format!("median of {n}"),
    );
    report(
        "GET /version via direct engine forward",
        &secs(via_direct),
        "peer",
    );
    report(
        "API round trip, host agent / direct",
        &format!("{:.2}x", via_agent.as_secs_f64() / via_direct.as_secs_f64()),
        "target <= 1.2x",
    );
    report(
        "published port upload",
        &format!("{published:.1} MiB/s"),
        &format!("{mib} MiB"),
    );
    report(
        "host loopback upload",
        &format!("{loopback:.1} MiB/s"),
        "peer",
    );
    report(
        "published port / loopback",
        &format!("{:.1} %", 100.0 * published / loopback),
        "target >= 50 % on hardware KVM",
    );
    report(
        "host agent RSS (idle)",
        &format!("{:.1} MiB", rss as f64 / 1024.0),
        "",
    );
    report(
        "host agent CPU (idle)",
        &format!(
            "{:.3} % of a core",
            100.0 * cpu.as_secs_f64() / idle.as_secs_f64()
        ),
        &format!("over {} s; target <= 0.5 %", idle.as_secs()),
    );
    report(
        "VM RSS before / peak / after a 768 MiB container",
        &format!(
            "{:.0} / {:.0} / {:.0} MiB",
            rss_before as f64 / 1024.0,
            rss_peak as f64 / 1024.0,
            rss_after as f64 / 1024.0
        ),
        &format!(
            "{:.0} % of the growth given back (free page reporting)",
            100.0 * (rss_peak.saturating_sub(rss_after)) as f64
                / (rss_peak.saturating_sub(rss_before)).max(1) as f64
        ),
    );
    if let Some(vm_cpu) = vm_cpu {
        report(
            "VM process CPU (idle)",
            &format!(
                "{:.1} % of a core",
                100.0 * vm_cpu.as_secs_f64() / idle.as_secs_f64()
            ),
            "QEMU",
        );
    }
}
