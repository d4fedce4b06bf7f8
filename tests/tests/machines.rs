//! The machines issue end to end: `rmachine start` on a real VM (the `qemu` driver; QEMU
//! under software emulation here), then the plain `docker` CLI through the machine's
//! context: build, published ports, stdin, `logs -f`, compose; clean stop and restart
//! with data kept; a killed VM shows the error state and recovers; bad input is refused
//! clearly.

use std::time::{Duration, Instant};

use rmachine_e2e::*;

const M: &str = "e2e";

#[test]
fn test_machine_lifecycle_with_the_plain_docker_cli() {
    let env = MachineEnv::new();

    // Bad input is refused clearly, before anything exists.
    assert!(env
        .rmachine_err(&["inspect", "nope"])
        .contains("no machine named \"nope\""));
    assert!(env
        .rmachine_err(&["create", "Bad/Name"])
        .contains("invalid machine name"));
    assert!(env
        .rmachine_err(&["create", "x1", "--cpus", "0"])
        .contains("cpus"));
    assert!(env
        .rmachine_err(&["create", "x2", "--memory", "lots"])
        .contains("memory"));
    assert!(env
        .rmachine_err(&["create", "x3", "--driver", "xen"])
        .contains("unknown driver"));
    assert!(env
        .rmachine_err(&["start", "--bogus-flag"])
        .contains("--bogus-flag"));

    env.rmachine_ok(&[
        "create", M, "--driver", "qemu", "--cpus", "2", "--memory", "2G", "--disk", "8G",
    ]);
    assert!(env.rmachine_err(&["create", M]).contains("already exists"));
    assert!(env
        .rmachine_err(&["config", "set", "cpus", "many", "-m", M])
        .contains("cpus"));
    assert!(env
        .rmachine_err(&["config", "set", "disk", "4G", "-m", M])
        .contains("cannot shrink"));
    assert_eq!(
        env.rmachine_ok(&["config", "get", "memory", "-m", M])
            .trim(),
        "2048M"
    );

    // Start: the machine's context becomes current and the plain docker CLI works.
    let started = Instant::now();
    env.rmachine_ok(&["start", M]);
    eprintln!("rmachine start: {:?}", started.elapsed());
    let listed = env.listed(M);
    assert_eq!(listed["state"], "running", "{listed}");
    assert_eq!(listed["active"], true, "{listed}");
    let server = env.docker_ok(&["version", "--format", "{{.Server.Version}}"]);
    assert!(server.trim().starts_with("26."), "{server}");
    let inspect: serde_json::Value =
        serde_json::from_str(&env.rmachine_ok(&["inspect", M])).unwrap();
    assert_eq!(inspect["driver"]["backend"], "qemu", "{inspect}");
    assert!(!inspect["driver"]["reason"]
        .as_str()
        .unwrap_or("")
        .is_empty());
    assert_eq!(
        inspect["state"]["carrier"]["token"], "(hidden)",
        "inspect must not print the token"
    );
    check_start_phases(&env, &inspect["state"]);

    // Images made here: busybox imported, a web image built with a build arg.
    let work = env.dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let tarball = busybox_tarball(&work);
    env.docker_ok(&["import", tarball.to_str().unwrap(), "e2e/busybox:1"]);
    let ctx = work.join("web");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM e2e/busybox:1\nARG GREETING=hi\nRUN echo \"$GREETING\" > /www/index.html\nCMD [\"httpd\", \"-f\", \"-p\", \"80\", \"-h\", \"/www\"]\n",
    )
    .unwrap();
    env.docker_ok(&[
        "build",
        "-q",
        "-t",
        "e2e/web:1",
        "--build-arg",
        "GREETING=served-by-rmachine",
        ctx.to_str().unwrap(),
    ]);

    // Published ports: open on the host while the container runs, closed after stop.
    let port = free_local_port();
    let mapping = format!("127.0.0.1:{port}:80");
    env.docker_ok(&["run", "-d", "--name", "web", "-p", &mapping, "e2e/web:1"]);
    let run_at = Instant::now();
    wait_until(
        "the published port serving",
        Duration::from_secs(20),
        || {
            http_get(port, "/").and_then(|b| {
                if b.trim() == "served-by-rmachine" {
                    Ok(())
                } else {
                    Err(b)
                }
            })
        },
    );
    eprintln!(
        "published port answered {:?} after docker run returned",
        run_at.elapsed()
    );
    env.docker_ok(&["stop", "-t", "1", "web"]);
    wait_until("the published port closed", Duration::from_secs(5), || {
        match std::net::TcpStream::connect(("127.0.0.1", port)) {
            Err(_) => Ok(()),
            Ok(_) => Err("still accepting".into()),
        }
    });

    // A host port already in use is reported, and nothing crashes.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_port = busy.local_addr().unwrap().port();
    env.docker_ok(&[
        "run",
        "-d",
        "--name",
        "clash",
        "-p",
        &format!("127.0.0.1:{busy_port}:80"),
        "e2e/web:1",
    ]);
    wait_until(
        "the port conflict reported",
        Duration::from_secs(20),
        || {
            let status = env.rmachine_ok(&["status", M]);
            if status.contains(&format!("{busy_port}/tcp")) && status.contains("NOT published") {
                Ok(())
            } else {
                Err(status)
            }
        },
    );
    drop(busy);
    assert_eq!(env.listed(M)["state"], "running");

    // host.docker.internal reaches a server on the host's loopback.
    let host_server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let host_port = host_server.local_addr().unwrap().port();
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        if let Ok((mut conn, _)) = host_server.accept() {
            let mut buf = [0u8; 1024];
            let _ = conn.read(&mut buf);
            let _ = conn.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 10\r\n\r\nhello-host");
        }
    });
    let url = format!("http://host.docker.internal:{host_port}/");
    assert_eq!(
        env.docker_ok(&["run", "--rm", "e2e/busybox:1", "wget", "-qO-", &url]),
        "hello-host"
    );

    // stdin passes through; logs -f follows to the container's end.
    let out = env.docker_ok_with(
        &["run", "--rm", "-i", "e2e/busybox:1", "cat"],
        Some(b"through stdin\n"),
        &[],
    );
    assert_eq!(out, "through stdin\n");
    env.docker_ok(&[
        "run",
        "-d",
        "--name",
        "counter",
        "e2e/busybox:1",
        "sh",
        "-c",
        "for i in 1 2 3; do echo line$i; sleep 1; done",
    ]);
    let logs = env.docker_ok(&["logs", "-f", "counter"]);
    assert_eq!(logs, "line1\nline2\nline3\n");

    // compose: two services, ${VAR} substitution and a build arg.
    let proj = work.join("proj");
    std::fs::create_dir_all(&proj).unwrap();
    std::fs::copy(ctx.join("Dockerfile"), proj.join("Dockerfile")).unwrap();
    std::fs::write(
        proj.join("compose.yaml"),
        "services:\n  web:\n    build:\n      context: .\n      args:\n        GREETING: ${GREETING}\n    image: e2e/composed:1\n  \
         worker:\n    image: e2e/busybox:1\n    command: [\"sleep\", \"300\"]\n",
    )
    .unwrap();
    let compose_file = proj.join("compose.yaml");
    let cf = compose_file.to_str().unwrap();
    env.docker_ok_with(
        &["compose", "-f", cf, "-p", "e2e", "up", "-d"],
        None,
        &[("GREETING", "bonjour")],
    );
    let services = env.docker_ok_with(
        &[
            "compose",
            "-f",
            cf,
            "-p",
            "e2e",
            "ps",
            "--format",
            "{{.Service}}",
        ],
        None,
        &[("GREETING", "bonjour")],
    );
    assert!(
        services.contains("web") && services.contains("worker"),
        "{services}"
    );
    let greeting = env.docker_ok_with(
        &[
            "compose",
            "-f",
            cf,
            "-p",
            "e2e",
            "exec",
            "-T",
            "web",
            "cat",
            "/www/index.html",
        ],
        None,
        &[("GREETING", "bonjour")],
    );
    assert_eq!(greeting.trim(), "bonjour");
    env.docker_ok_with(
        &["compose", "-f", cf, "-p", "e2e", "down"],
        None,
        &[("GREETING", "bonjour")],
    );

    // A volume whose data must survive stops and crashes.
    env.docker_ok(&["volume", "create", "keep"]);
    env.docker_ok(&[
        "run",
        "--rm",
        "-v",
        "keep:/data",
        "e2e/busybox:1",
        "sh",
        "-c",
        "echo kept > /data/f",
    ]);

    // Clean stop: socket gone, state stopped; a new start finds containers and volumes.
    env.rmachine_ok(&["stop", M]);
    assert_eq!(env.listed(M)["state"], "stopped");
    let sock = env.home.join("machines").join(M).join("docker.sock");
    assert!(!sock.exists(), "docker.sock left behind after stop");
    env.rmachine_ok(&["start", M]);
    let names = env.docker_ok(&["ps", "-a", "--format", "{{.Names}}"]);
    assert!(
        names.lines().any(|n| n == "web") && names.lines().any(|n| n == "clash"),
        "{names}"
    );
    assert_eq!(
        env.docker_ok(&[
            "run",
            "--rm",
            "-v",
            "keep:/data",
            "e2e/busybox:1",
            "cat",
            "/data/f"
        ]),
        "kept\n"
    );

    // kill -9 of the VM: the machine shows the error state with the console's lines.
    let vm_pid = env.state(M)["vm"]["pid"]
        .as_u64()
        .expect("vm.pid in state.json");
    let status = std::process::Command::new("kill")
        .args(["-9", &vm_pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    wait_until("the error state", Duration::from_secs(30), || {
        let m = env.listed(M);
        if m["state"] == "error" {
            Ok(())
        } else {
            Err(m.to_string())
        }
    });
    let error = env.listed(M)["error"].as_str().unwrap_or("").to_string();
    assert!(
        error.contains("exited unexpectedly") && error.contains("console"),
        "{error}"
    );
    // The console's last lines are in the error: the kernel's and the agent's.
    assert!(
        error.contains("rmachine-agent") || error.contains("INFO"),
        "no console lines in the error: {error}"
    );
    // And it recovers, data disk intact.
    env.rmachine_ok(&["start", M]);
    assert_eq!(
        env.docker_ok(&[
            "run",
            "--rm",
            "-v",
            "keep:/data",
            "e2e/busybox:1",
            "cat",
            "/data/f"
        ]),
        "kept\n"
    );
    env.rmachine_ok(&["stop", M]);

    // A corrupt machine.toml: listed as an error, start names the file, nothing lost.
    let toml_path = env.home.join("machines").join(M).join("machine.toml");
    let good = std::fs::read_to_string(&toml_path).unwrap();
    std::fs::write(&toml_path, "version = 1\ncpus = [oops\n").unwrap();
    assert_eq!(env.listed(M)["state"], "error");
    assert!(env.rmachine_err(&["start", M]).contains("machine.toml"));
    assert!(
        env.home.join("machines").join(M).join("data.img").exists(),
        "data disk lost"
    );
    std::fs::write(&toml_path, good).unwrap();

    // Removal takes the context with it.
    env.rmachine_ok(&["rm", M]);
    assert!(env
        .rmachine_err(&["inspect", M])
        .contains("no machine named"));
    let contexts = env.docker_ok(&["context", "ls", "--format", "{{.Name}}"]);
    assert!(!contexts.contains("rmachine-e2e"), "{contexts}");
    let _ = env.hostagent_log(M);
}

/// The start's steps are recorded, from the host and from the guest, in order on one
/// clock, and the guest's are placed inside the host's (its kernel started after the VM
/// process did, its services listened before the host's ping got an answer).
fn check_start_phases(env: &MachineEnv, state: &serde_json::Value) {
    assert_eq!(state["start_kind"], "boot", "{state}");
    let phases = state["start_phases"].as_array().expect("start_phases");
    let at = |name: &str| {
        phases
            .iter()
            .find(|p| p["name"] == name)
            .and_then(|p| p["ms"].as_u64())
            .unwrap_or_else(|| panic!("no phase {name:?} in {state}"))
    };
    let times: Vec<u64> = phases.iter().map(|p| p["ms"].as_u64().unwrap()).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{state}");
    assert!(at("VM process started") <= at("kernel started"), "{state}");
    assert!(at("kernel started") < at("agent started"), "{state}");
    assert!(
        at("guest services listening") <= at("agent answered ping") + 500,
        "{state}"
    );
    assert!(at("data disk mounted") < at("containerd ready"), "{state}");
    assert!(at("containerd ready") < at("dockerd ready"), "{state}");
    assert!(
        at("dockerd ready") <= at("engine ready (seen by the host agent)") + 500,
        "{state}"
    );
    assert!(phases.iter().any(|p| p["clock"] == "guest"), "{state}");
    // The human form lists the same steps.
    let table = env.rmachine_ok(&["status", M, "--phases"]);
    for step in [
        "kernel started",
        "dockerd ready",
        "docker.sock answers _ping",
    ] {
        assert!(table.contains(step), "{table}");
    }
}
