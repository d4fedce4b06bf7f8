//! An arm64 machine under emulation (issue 11): `rmachine create --arch arm64 --driver
//! qemu` boots the arm64 guest image under `qemu-system-aarch64` (software emulation on
//! this x86_64 host), and the plain `docker` CLI works through the machine's context: the
//! engine is aarch64, an imported arm64 busybox runs, a published port answers on the
//! host, a shared folder carries files both ways, and a stop and start keep the data.
//!
//! Needs the arm64 image (`rmachine image build --arch arm64`, a part of `.ci/run`) and
//! fails with that instruction without it.

use std::time::{Duration, Instant};

use rmachine_e2e::*;

const M: &str = "arm";

fn wait_until(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Result<(), String>,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    while Instant::now() < deadline {
        match check() {
            Ok(()) => return Ok(()),
            Err(e) => last = e,
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(format!("{what} not reached within {timeout:?}: {last}"))
}

/// What a failure message shows: the machine's status, containers and host agent log.
fn diagnostics(env: &MachineEnv) -> String {
    let out = |o: std::process::Output| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };
    let log = env.hostagent_log(M);
    let tail: Vec<&str> = log.lines().rev().take(40).collect();
    format!(
        "--- rmachine status ---\n{}--- docker ps -a ---\n{}--- host agent log (last 40 lines) ---\n{}",
        out(env.rmachine(&["status", M])),
        out(env.docker(&["ps", "-a"], None, &[])),
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    )
}

/// The command line of the machine's VM process, from state.json's pid.
fn vm_cmdline(env: &MachineEnv) -> String {
    let state = env.state(M);
    let pid = state["vm"]["pid"]
        .as_u64()
        .unwrap_or_else(|| panic!("no VM pid in state.json: {state}"));
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_else(|e| panic!("VM process {pid}: {e}"))
}

#[test]
fn test_arm64_machine_under_emulation() {
    let test_started = Instant::now();
    let env = MachineEnv::with_image_of(Arch::Arm64);
    let (manifest, _) = image_of(Arch::Arm64);
    assert_eq!(manifest.arch, Arch::Arm64);
    eprintln!("arm64 image {}", manifest.version);
    let images = env.rmachine_ok(&["image", "ls"]);
    assert!(
        images
            .lines()
            .any(|l| l.starts_with(&manifest.version) && l.contains(" arm64 ")),
        "{images}"
    );

    // Bad input is refused clearly.
    assert!(env
        .rmachine_err(&["create", "x1", "--arch", "sparc"])
        .contains("unknown architecture \"sparc\""));
    if Arch::host() != Arch::Arm64 {
        let err = env.rmachine_err(&["create", "x2", "--arch", "arm64", "--driver", "vmm"]);
        assert!(
            err.contains("vmm driver cannot run arm64 guests") && err.contains("--driver qemu"),
            "{err}"
        );
        assert!(
            env.rmachine_err(&["inspect", "x2"]).contains("no machine"),
            "a refused create leaves nothing"
        );
    }

    let share = env.dir.path().join("share");
    std::fs::create_dir_all(&share).unwrap();
    let share_arg = share.to_str().unwrap();
    env.rmachine_ok(&[
        "create", M, "--arch", "arm64", "--driver", "qemu", "--cpus", "2", "--memory", "2G",
        "--disk", "8G", "--mount", share_arg,
    ]);
    assert_eq!(
        env.rmachine_ok(&["config", "get", "arch", "-m", M]).trim(),
        "arm64"
    );
    let inspect: serde_json::Value =
        serde_json::from_str(&env.rmachine_ok(&["inspect", M])).unwrap();
    assert_eq!(inspect["arch"], "arm64", "{inspect}");
    assert_eq!(inspect["driver"]["backend"], "qemu", "{inspect}");
    if Arch::host() != Arch::Arm64 {
        assert_eq!(inspect["driver"]["accel"], "tcg", "{inspect}");
        let why = inspect["driver"]["accel_reason"].as_str().unwrap_or("");
        assert!(why.contains("software emulation"), "{inspect}");
    }
    assert_eq!(env.listed(M)["arch"], "arm64");

    // Start: boots under qemu-system-aarch64 to the agent's ping, then the engine.
    let started = Instant::now();
    env.rmachine_ok(&["start", M]);
    let start_time = started.elapsed();
    let state = env.state(M);
    let ping_ms = state["ping_ms"].as_u64().expect("ping_ms recorded");
    let engine_ms = state["engine_ready_ms"]
        .as_u64()
        .expect("engine time recorded");
    eprintln!(
        "rmachine start: {start_time:?} (agent ping {ping_ms} ms, engine ready {engine_ms} ms after QEMU started)"
    );
    assert_eq!(state["image"], manifest.version.as_str(), "{state}");
    let cmdline = vm_cmdline(&env);
    assert!(
        cmdline.starts_with("qemu-system-aarch64 ")
            && cmdline.contains("-M virt")
            && cmdline.contains("virtio-blk-device,drive=root,bus=virtio-mmio-bus.0")
            && !cmdline.contains("reboot=t"),
        "{cmdline}"
    );
    let listed = env.listed(M);
    assert_eq!(listed["state"], "running", "{listed}");
    assert_eq!(listed["active"], true, "{listed}");

    // The engine is arm64's.
    let version = env.docker_ok(&[
        "version",
        "--format",
        "{{.Server.Os}}/{{.Server.Arch}} {{.Server.Version}}",
    ]);
    assert!(version.trim().starts_with("linux/arm64 26."), "{version}");
    assert_eq!(
        env.docker_ok(&["info", "--format", "{{.Architecture}}"])
            .trim(),
        "aarch64"
    );

    // An arm64 busybox (trixie's busybox-static for arm64) imported and run.
    let work = env.dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let tarball = busybox_tarball_of(&work, Arch::Arm64);
    env.docker_ok(&[
        "import",
        "--platform",
        "linux/arm64",
        tarball.to_str().unwrap(),
        "e2e/busybox:arm64",
    ]);
    assert_eq!(
        env.docker_ok(&[
            "image",
            "inspect",
            "--format",
            "{{.Architecture}}",
            "e2e/busybox:arm64"
        ])
        .trim(),
        "arm64"
    );
    let run_at = Instant::now();
    assert_eq!(
        env.docker_ok(&["run", "--rm", "e2e/busybox:arm64", "uname", "-m"])
            .trim(),
        "aarch64"
    );
    eprintln!("docker run --rm: {:?}", run_at.elapsed());

    // A build on the arm64 engine (several RUN steps on both vCPUs, which software
    // emulation runs on one host thread each).
    let ctx = work.join("build");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM e2e/busybox:arm64\nRUN uname -m > /arch\nRUN for i in 1 2 3 4 5 6 7 8; do echo $i; done | wc -l > /count\nCMD [\"cat\", \"/arch\", \"/count\"]\n",
    )
    .unwrap();
    let build_at = Instant::now();
    env.docker_ok(&[
        "build",
        "-q",
        "-t",
        "e2e/built:arm64",
        ctx.to_str().unwrap(),
    ]);
    eprintln!("docker build: {:?}", build_at.elapsed());
    assert_eq!(
        env.docker_ok(&["run", "--rm", "e2e/built:arm64"])
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["aarch64", "8"]
    );

    // The shared folder, host to guest: a page a published port serves to the host.
    std::fs::write(share.join("index.html"), "served-by-arm64\n").unwrap();
    let port = free_local_port();
    let mapping = format!("127.0.0.1:{port}:80");
    let www = format!("{share_arg}:/www:ro");
    env.docker_ok(&[
        "run",
        "-d",
        "--name",
        "web",
        "-p",
        &mapping,
        "-v",
        &www,
        "e2e/busybox:arm64",
        "httpd",
        "-f",
        "-p",
        "80",
        "-h",
        "/www",
    ]);
    let run_at = Instant::now();
    wait_until(
        "the published port serving the shared page",
        Duration::from_secs(60),
        || {
            http_get(port, "/").and_then(|b| {
                if b.trim() == "served-by-arm64" {
                    Ok(())
                } else {
                    Err(b)
                }
            })
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", diagnostics(&env)));
    eprintln!(
        "published port answered {:?} after docker run returned",
        run_at.elapsed()
    );
    env.docker_ok(&["rm", "-f", "web"]);

    // Guest to host: a container writes into the share; the file belongs to the host
    // user.
    let bind = format!("{share_arg}:/s");
    env.docker_ok(&[
        "run",
        "--rm",
        "-v",
        &bind,
        "e2e/busybox:arm64",
        "sh",
        "-c",
        "uname -m > /s/from-guest.txt",
    ]);
    assert_eq!(
        std::fs::read_to_string(share.join("from-guest.txt"))
            .unwrap()
            .trim(),
        "aarch64"
    );

    // Data on the data disk: a volume's file and the imported image survive a stop and a
    // start.
    env.docker_ok(&["volume", "create", "keep"]);
    env.docker_ok(&[
        "run",
        "--rm",
        "-v",
        "keep:/data",
        "e2e/busybox:arm64",
        "sh",
        "-c",
        "echo kept-across-restart > /data/file && sync",
    ]);
    let stopped_at = Instant::now();
    env.rmachine_ok(&["stop", M]);
    eprintln!("rmachine stop: {:?}", stopped_at.elapsed());
    assert_eq!(env.listed(M)["state"], "stopped");
    let pid = state["vm"]["pid"].as_u64().unwrap();
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists()
            || !std::fs::read(format!("/proc/{pid}/cmdline"))
                .unwrap_or_default()
                .starts_with(b"qemu-system-aarch64"),
        "QEMU {pid} still runs after stop"
    );
    let restarted = Instant::now();
    env.rmachine_ok(&["start", M]);
    eprintln!("second rmachine start: {:?}", restarted.elapsed());
    assert_eq!(
        env.docker_ok(&[
            "run",
            "--rm",
            "-v",
            "keep:/data",
            "e2e/busybox:arm64",
            "cat",
            "/data/file"
        ])
        .trim(),
        "kept-across-restart"
    );
    env.rmachine_ok(&["stop", M]);
    assert_eq!(env.listed(M)["state"], "stopped");
    eprintln!("arm64 test: {:?} in all", test_started.elapsed());
}
