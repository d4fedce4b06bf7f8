//! Machines on one network (qemu driver, software emulation here): two machines on
//! `rmachine network create lan` reach each other by address and by name over their
//! second NIC (through the network's switch), their containers reach the other machine,
//! the default route stays on the user-mode NIC, Docker Swarm runs across them (routing
//! mesh on every node and on the host's localhost, an overlay network with service names),
//! a machine that joins later is known by name to the running one, and the switch ends
//! after its last machine stops.

use std::time::Duration;

use rmachine_e2e::*;

const IMG: &str = "e2e/busybox:1";

fn shell(env: &MachineEnv, machine: &str, script: &str) -> std::process::Output {
    env.rmachine(&["shell", machine, "--", "sh", "-c", script])
}

fn shell_ok(env: &MachineEnv, machine: &str, script: &str) -> String {
    let out = shell(env, machine, script);
    assert!(
        out.status.success(),
        "{machine}: {script}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn test_two_machines_reach_each_other_on_a_network() {
    let env = MachineEnv::new();
    // Bad input first: a network that does not exist, a subnet that cannot work.
    assert!(env
        .rmachine_err(&["create", "x", "--network", "nope"])
        .contains("no network named"));
    assert!(env
        .rmachine_err(&["network", "create", "bad", "--subnet", "10.0.2.0/24"])
        .contains("10.0.2.0/24"));
    env.rmachine_ok(&["network", "create", "lan"]);
    let settings = [
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
    ];
    for m in ["n1", "n2"] {
        let mut args = vec!["create", m];
        args.extend(settings);
        env.rmachine_ok(&args);
    }
    let inspect: serde_json::Value =
        serde_json::from_str(&env.rmachine_ok(&["network", "inspect", "lan"])).unwrap();
    let a1 = inspect["members"]["n1"].as_str().unwrap().to_string();
    let a2 = inspect["members"]["n2"].as_str().unwrap().to_string();
    assert_eq!(
        (a1.as_str(), a2.as_str()),
        ("192.168.105.2", "192.168.105.3")
    );
    assert!(env
        .rmachine_err(&["network", "rm", "lan"])
        .contains("n1, n2"));

    // Engine settings: checked when set, applied at the start (a private registry on the
    // network, reached over plain HTTP).
    assert!(env
        .rmachine_err(&[
            "config",
            "set",
            "engine.hosts",
            "[\"tcp://0.0.0.0:2375\"]",
            "-m",
            "n1"
        ])
        .contains("cannot be set"));
    env.rmachine_ok(&[
        "config",
        "set",
        "engine.insecure-registries",
        &format!("[\"{a2}:5000\"]"),
        "-m",
        "n1",
    ]);
    env.rmachine_ok(&["start", "n1", "--no-use"]);
    let registries = env.docker_ok(&[
        "--context",
        "rmachine-n1",
        "info",
        "--format",
        "{{json .RegistryConfig.IndexConfigs}}",
    ]);
    assert!(registries.contains(&format!("{a2}:5000")), "{registries}");
    env.rmachine_ok(&["start", "n2", "--no-use"]);
    // The second NIC has its address, and no default route.
    let addrs = shell_ok(&env, "n1", "ip -4 -o addr show");
    assert!(addrs.contains(&format!("{a1}/24")), "{addrs}");
    let routes = shell_ok(&env, "n1", "ip route show default");
    assert!(
        routes.contains("10.0.2.2") && !routes.contains("192.168.105"),
        "{routes}"
    );
    let work = env.dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let tarball = busybox_tarball(&work);
    for m in ["n1", "n2"] {
        env.docker_ok(&[
            "--context",
            &format!("rmachine-{m}"),
            "import",
            tarball.to_str().unwrap(),
            IMG,
        ]);
    }
    // By address (from the machine's own network namespace) and by name, both ways.
    let ping = |from: &str, to: &str| {
        env.docker(
            &[
                "--context",
                &format!("rmachine-{from}"),
                "run",
                "--rm",
                "--network",
                "host",
                IMG,
                "ping",
                "-c",
                "1",
                "-W",
                "3",
                to,
            ],
            None,
            &[],
        )
    };
    for (from, to, addr) in [("n1", "n2", &a2), ("n2", "n1", &a1)] {
        wait_until(
            &format!("{from} reaches {to}"),
            Duration::from_secs(60),
            || {
                let out = ping(from, addr);
                out.status
                    .success()
                    .then_some(())
                    .ok_or(String::from_utf8_lossy(&out.stdout).into_owned())
            },
        );
        // The machine resolves its peers' names (its /etc/hosts, written by the agent).
        let resolved = shell_ok(&env, from, &format!("getent hosts {to}"));
        assert!(resolved.contains(addr.as_str()), "{resolved}");
    }
    // A container on n1 reaches a server on n2's network address.
    env.docker_ok(&[
        "--context",
        "rmachine-n2",
        "run",
        "-d",
        "-p",
        "8080:8080",
        IMG,
        "sh",
        "-c",
        "mkdir -p /www && echo from-n2 > /www/index.html && httpd -f -p 8080 -h /www",
    ]);
    wait_until(
        "n1's container fetches n2's page",
        Duration::from_secs(60),
        || {
            let out = env.docker(
                &[
                    "--context",
                    "rmachine-n1",
                    "run",
                    "--rm",
                    IMG,
                    "wget",
                    "-q",
                    "-O",
                    "-",
                    &format!("http://{a2}:8080/"),
                ],
                None,
                &[],
            );
            (String::from_utf8_lossy(&out.stdout).trim() == "from-n2")
                .then_some(())
                .ok_or(String::from_utf8_lossy(&out.stderr).into_owned())
        },
    );

    swarm_across_machines(&env, &a1, &a2);

    // A machine that joins later: the running ones learn its name.
    let mut args = vec!["create", "n3"];
    args.extend(settings);
    env.rmachine_ok(&args);
    let hosts = shell_ok(&env, "n1", "cat /etc/hosts");
    assert!(
        hosts.contains("192.168.105.4") && hosts.contains("n3"),
        "{hosts}"
    );

    // The switch ends after its last machine stops (a full shutdown: a save would only
    // cost time here).
    env.rmachine_ok(&["stop", "--no-save", "n1"]);
    env.rmachine_ok(&["stop", "--no-save", "n2"]);
    // (Its socket and pid file go with it; a connection to test it would be a port.)
    let socket = env.home.join("networks/lan/switch.sock");
    let pid_file = env.home.join("networks/lan/switch.pid");
    wait_until("the switch ends", Duration::from_secs(90), || {
        (!socket.exists() && !pid_file.exists())
            .then_some(())
            .ok_or("still there".into())
    });
    env.rmachine_ok(&["rm", "n1", "n2", "n3"]);
    env.rmachine_ok(&["network", "rm", "lan"]);
}

/// An HTTP GET of `/` through `nc` in a throwaway container of machine `m` (busybox's
/// static wget crashes resolving names; nc does not): the page's last line.
fn fetch_in(
    env: &MachineEnv,
    m: &str,
    network: &str,
    host: &str,
    port: u16,
) -> Result<String, String> {
    let script = format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 5 {host} {port}");
    let out = env.docker(
        &[
            "--context",
            &format!("rmachine-{m}"),
            "run",
            "--rm",
            "--network",
            network,
            IMG,
            "sh",
            "-c",
            &script,
        ],
        None,
        &[],
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    match text.lines().last().map(str::trim) {
        Some(last) if out.status.success() && text.starts_with("HTTP/1.") => Ok(last.to_string()),
        _ => Err(format!("{text}{}", String::from_utf8_lossy(&out.stderr))),
    }
}

/// Docker Swarm as in Docker's docs, over the machines' network: n1 initializes with its
/// network address (and an address pool that stays clear of the user-mode NIC's
/// 10.0.2.0/24, which the default 10.0.0.0/8 pool overlaps), n2 joins; a replicated
/// service's published port answers on both nodes' addresses from both replicas (the
/// routing mesh crosses machines over VXLAN) and on the host's localhost (n1's host agent
/// forwards a manager's service ports); services on an overlay network find each other by
/// name (VIP) and `tasks.NAME`.
fn swarm_across_machines(env: &MachineEnv, a1: &str, a2: &str) {
    let d1 = |args: &[&str]| {
        let mut all = vec!["--context", "rmachine-n1"];
        all.extend(args);
        env.docker_ok(&all)
    };
    d1(&[
        "swarm",
        "init",
        "--advertise-addr",
        a1,
        "--default-addr-pool",
        "10.20.0.0/16",
    ]);
    let token = d1(&["swarm", "join-token", "-q", "worker"]);
    env.docker_ok(&[
        "--context",
        "rmachine-n2",
        "swarm",
        "join",
        "--token",
        token.trim(),
        &format!("{a1}:2377"),
    ]);
    wait_until("both nodes are ready", Duration::from_secs(60), || {
        let nodes = d1(&["node", "ls", "--format", "{{.Hostname}} {{.Status}}"]);
        (nodes.contains("n1 Ready") && nodes.contains("n2 Ready"))
            .then_some(())
            .ok_or(nodes)
    });

    let page = "mkdir -p /www && hostname > /www/index.html && httpd -f -p 80 -h /www";
    let service = |name: &str, extra: &[&str]| {
        let mut args = vec![
            "service",
            "create",
            "--name",
            name,
            "--replicas",
            "2",
            "--replicas-max-per-node",
            "1",
            "--no-resolve-image",
            "--detach",
        ];
        args.extend(extra);
        args.extend([IMG, "sh", "-c", page]);
        d1(&args)
    };
    service("web", &["--publish", "8081:80"]);
    // Both replicas answer through each node's address, n2's included.
    for (node, addr) in [("n1", a1), ("n2", a2)] {
        let mut seen = std::collections::BTreeSet::new();
        wait_until(
            &format!("both replicas answer through {node}'s address"),
            Duration::from_secs(240),
            || {
                seen.insert(fetch_in(env, "n1", "host", addr, 8081)?);
                (seen.len() == 2).then_some(()).ok_or(format!("{seen:?}"))
            },
        );
    }
    // And on the host's localhost, like a container's published port.
    wait_until(
        "the service port on localhost",
        Duration::from_secs(60),
        || {
            let mut s =
                std::net::TcpStream::connect(("127.0.0.1", 8081)).map_err(|e| e.to_string())?;
            s.set_read_timeout(Some(Duration::from_secs(10)))
                .map_err(|e| e.to_string())?;
            std::io::Write::write_all(&mut s, b"GET / HTTP/1.0\r\n\r\n")
                .map_err(|e| e.to_string())?;
            let mut page = String::new();
            let _ = std::io::Read::read_to_string(&mut s, &mut page);
            page.starts_with("HTTP/1.").then_some(()).ok_or(page)
        },
    );
    let status = env.rmachine_ok(&["status", "n1"]);
    assert!(status.contains("8081/tcp -> service web"), "{status}");

    // Services on an overlay network, reached by name (the VIP) and by tasks.NAME.
    d1(&[
        "network",
        "create",
        "--driver",
        "overlay",
        "--attachable",
        "apps",
    ]);
    service("api", &["--network", "apps"]);
    for name in ["api", "tasks.api"] {
        wait_until(
            &format!("{name} answers on the overlay"),
            Duration::from_secs(240),
            || fetch_in(env, "n1", "apps", name, 80).map(|_| ()),
        );
    }
}
