//! Machines on one network (qemu driver, software emulation here): two machines on
//! `rmachine network create lan` reach each other by address and by name over their
//! second NIC (through the network's switch), their containers reach the other machine,
//! the default route stays on the user-mode NIC, Docker Swarm runs across them (routing
//! mesh on every node and on the host's localhost, an overlay network with service names,
//! a private registry pushed to from one node and pulled from by the other, a global
//! service, a rolling update, a stack with a secret and a config, a node leaving and
//! rejoining), a machine that joins later is known by name to the running one, and the
//! switch ends after its last machine stops.

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
    let a3 = "192.168.105.4";
    let hosts = shell_ok(&env, "n1", "cat /etc/hosts");
    assert!(hosts.contains(a3) && hosts.contains("n3"), "{hosts}");
    third_node_joins(&env, &a1, a3);

    // The switch ends after its last machine stops (a full shutdown: a save would only
    // cost time here).
    for m in ["n1", "n2", "n3"] {
        env.rmachine_ok(&["stop", "--no-save", m]);
    }
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
    // A second service on the overlay finds the first by its name, which resolves to the
    // service's VIP, and through it reaches a task (what its log says).
    let vip = d1(&[
        "service",
        "inspect",
        "api",
        "--format",
        "{{range .Endpoint.VirtualIPs}}{{.Addr}} {{end}}",
    ]);
    // (The test image's busybox has no getent or sed: its own nslookup and awk.)
    let caller = "while :; do \
                  busybox nslookup api 2>/dev/null | busybox awk '/^Address/ {a=$2} END {print \"resolved \" a}'; \
                  printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 5 api 80 | busybox tail -n 1 | busybox awk '{print \"answered \" $0}'; \
                  sleep 5; done";
    d1(&[
        "service",
        "create",
        "--name",
        "caller",
        "--network",
        "apps",
        "--no-resolve-image",
        "--detach",
        IMG,
        "sh",
        "-c",
        caller,
    ]);
    wait_until(
        "the caller service reaches api by name",
        Duration::from_secs(240),
        || {
            let out = env.docker(
                &[
                    "--context",
                    "rmachine-n1",
                    "service",
                    "logs",
                    "--raw",
                    "caller",
                ],
                None,
                &[],
            );
            let log = String::from_utf8_lossy(&out.stdout).into_owned();
            let resolved = log
                .lines()
                .filter_map(|l| l.trim().strip_prefix("resolved "));
            let via_vip = resolved
                .map(|addr| addr.trim())
                .any(|addr| !addr.is_empty() && vip.contains(&format!("{addr}/")));
            let answered = log.lines().any(|l| {
                l.trim()
                    .strip_prefix("answered ")
                    .is_some_and(|a| !a.trim().is_empty())
            });
            (via_vip && answered)
                .then_some(())
                .ok_or(format!("VIPs {vip}; log: {log}"))
        },
    );
    d1(&["service", "rm", "caller"]);

    registry_global_update_stack(env);
}

/// A third machine started after the swarm was made joins it as a worker: the global
/// service starts a task on it (its image pulled from the registry service through the
/// mesh), and the replicated `web` service, which has no task on n3, answers through n3's
/// address from both replicas (the routing mesh on a node without a task).
fn third_node_joins(env: &MachineEnv, a1: &str, a3: &str) {
    let t = std::time::Instant::now();
    env.rmachine_ok(&["start", "n3", "--no-use"]);
    let d = |m: &str, args: &[&str]| {
        let context = format!("rmachine-{m}");
        let mut all = vec!["--context", context.as_str()];
        all.extend(args);
        env.docker_ok(&all)
    };
    let token = d("n1", &["swarm", "join-token", "-q", "worker"]);
    d(
        "n3",
        &[
            "swarm",
            "join",
            "--token",
            token.trim(),
            &format!("{a1}:2377"),
        ],
    );
    wait_until(
        "the manager sees n3 ready",
        Duration::from_secs(120),
        || {
            let nodes = d(
                "n1",
                &["node", "ls", "--format", "{{.Hostname}} {{.Status}}"],
            );
            nodes.contains("n3 Ready").then_some(()).ok_or(nodes)
        },
    );
    eprintln!("swarm: n3 joined at {:.0} s", t.elapsed().as_secs_f64());
    wait_until(
        "the global service runs on n3 too",
        Duration::from_secs(240),
        || {
            let tasks = d(
                "n1",
                &[
                    "service",
                    "ps",
                    "everywhere",
                    "--filter",
                    "desired-state=running",
                    "--format",
                    "{{.Node}} {{.CurrentState}}",
                ],
            );
            tasks
                .lines()
                .any(|l| l.starts_with("n3 Running"))
                .then_some(())
                .ok_or(tasks)
        },
    );
    let web_nodes = d(
        "n1",
        &[
            "service",
            "ps",
            "web",
            "--filter",
            "desired-state=running",
            "--format",
            "{{.Node}}",
        ],
    );
    assert!(
        !web_nodes.contains("n3"),
        "web has a task on n3: {web_nodes}"
    );
    let mut seen = std::collections::BTreeSet::new();
    wait_until(
        "both web replicas answer through n3's address",
        Duration::from_secs(240),
        || {
            seen.insert(fetch_in(env, "n1", "host", a3, 8081)?);
            (seen.len() == 2).then_some(()).ok_or(format!("{seen:?}"))
        },
    );
    eprintln!(
        "swarm: n3 runs the global task and serves the mesh at {:.0} s",
        t.elapsed().as_secs_f64()
    );
}

/// The host's `GET path` on 127.0.0.1:`port`: the whole reply.
fn localhost_get(port: u16, path: &str) -> Result<String, String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .map_err(|e| e.to_string())?;
    std::io::Write::write_all(
        &mut s,
        format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes(),
    )
    .map_err(|e| e.to_string())?;
    let mut reply = String::new();
    let _ = std::io::Read::read_to_string(&mut s, &mut reply);
    reply
        .starts_with("HTTP/1.")
        .then_some(reply.clone())
        .ok_or(reply)
}

/// The rest of Docker's swarm story on the two nodes, as its docs tell it:
/// - a private registry run as a service (its port is on every node's loopback through
///   the routing mesh, and a loopback registry needs no TLS nor engine setting), pushed
///   to from n1 and read from the host's localhost;
/// - a global service of the pushed image: one task per node, n2 pulling it from the
///   registry;
/// - a rolling update of it that completes, every task replaced;
/// - `docker stack deploy` of a compose file with a secret and a config, served on the
///   host's localhost;
/// - n2 leaving (its machine stopped: the manager sees it down) and coming back: it
///   rejoins and gets its global task again.
fn registry_global_update_stack(env: &MachineEnv) {
    let ctx = |m: &'static str| {
        move |args: &[&str]| {
            let mut all = vec![
                "--context",
                if m == "n1" {
                    "rmachine-n1"
                } else {
                    "rmachine-n2"
                },
            ];
            all.extend(args);
            env.docker(&all, None, &[])
        }
    };
    let (d1, d2) = (ctx("n1"), ctx("n2"));
    let ok = |out: std::process::Output| -> Result<String, String> {
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    };
    let must = |out: std::process::Output| ok(out).unwrap_or_else(|e| panic!("{e}"));
    // Each step's time, for the CI log (under emulation every swarm step costs seconds).
    let t = std::time::Instant::now();
    let done = |step: &str| eprintln!("swarm: {step} at {:.0} s", t.elapsed().as_secs_f64());

    let work = env.dir.path().join("registry");
    std::fs::create_dir_all(&work).unwrap();
    let tarball = registry_tarball(&work);
    must(d1(&["import", tarball.to_str().unwrap(), "e2e/registry:1"]));
    must(d1(&[
        "service",
        "create",
        "--name",
        "registry",
        "--publish",
        "5055:5000",
        "--constraint",
        "node.role==manager",
        "--no-resolve-image",
        "--detach",
        "e2e/registry:1",
        "/usr/bin/docker-registry",
        "serve",
        "/etc/registry.yml",
    ]));
    let image = "127.0.0.1:5055/e2e/web:2";
    must(d1(&["tag", IMG, image]));
    wait_until(
        "a push to the registry service",
        Duration::from_secs(180),
        || ok(d1(&["push", image])).map(|_| ()),
    );
    done("registry pushed to");
    wait_until(
        "the registry's catalog on the host's localhost",
        Duration::from_secs(60),
        || {
            let reply = localhost_get(5055, "/v2/_catalog")?;
            reply.contains("e2e/web").then_some(()).ok_or(reply)
        },
    );

    // A global service of the pushed image: n2 has never seen it and pulls it.
    let page = "mkdir -p /www && (hostname; env) > /www/index.html && httpd -f -p 80 -h /www";
    must(d1(&[
        "service",
        "create",
        "--name",
        "everywhere",
        "--mode",
        "global",
        "--detach",
        image,
        "sh",
        "-c",
        page,
    ]));
    let running = |service: &str| -> String {
        ok(d1(&[
            "service",
            "ps",
            service,
            "--filter",
            "desired-state=running",
            "--format",
            "{{.Node}} {{.CurrentState}}",
        ]))
        .unwrap_or_else(|e| e)
    };
    let on_both = |service: &'static str| {
        move || {
            let tasks = running(service);
            let lines: Vec<&str> = tasks.lines().collect();
            (lines.len() == 2
                && ["n1 Running", "n2 Running"]
                    .iter()
                    .all(|n| lines.iter().any(|l| l.starts_with(n))))
            .then_some(())
            .ok_or(tasks)
        }
    };
    wait_until(
        "one task of the global service per node",
        Duration::from_secs(240),
        on_both("everywhere"),
    );
    done("global service on both nodes");
    let pulled = must(d2(&["image", "ls", "-q", "127.0.0.1:5055/e2e/web"]));
    assert!(!pulled.trim().is_empty(), "n2 did not pull the image");

    // A rolling update, one task at a time: it completes and every task carries it.
    must(d1(&[
        "service",
        "update",
        "--detach",
        "--update-parallelism",
        "1",
        "--env-add",
        "STAGE=2",
        "everywhere",
    ]));
    wait_until(
        "the rolling update completes",
        Duration::from_secs(300),
        || {
            let state = ok(d1(&[
                "service",
                "inspect",
                "everywhere",
                "--format",
                "{{if .UpdateStatus}}{{.UpdateStatus.State}}{{end}}",
            ]))?;
            (state.trim() == "completed").then_some(()).ok_or(state)
        },
    );
    done("rolling update completed");
    for d in [&d1, &d2] {
        let ids = must(d(&[
            "ps",
            "-q",
            "--filter",
            "label=com.docker.swarm.service.name=everywhere",
        ]));
        let ids: Vec<&str> = ids.split_whitespace().collect();
        assert_eq!(ids.len(), 1, "one running task per node: {ids:?}");
        let env_of = must(d(&["inspect", "--format", "{{.Config.Env}}", ids[0]]));
        assert!(env_of.contains("STAGE=2"), "{env_of}");
    }

    // `docker stack deploy` of a compose file with a secret and a config.
    std::fs::write(work.join("token.txt"), "s3cret-token\n").unwrap();
    std::fs::write(work.join("motd.txt"), "hello from a config\n").unwrap();
    let compose = format!(
        "services:\n\
         \x20 page:\n\
         \x20   image: {IMG}\n\
         \x20   command: [\"sh\", \"-c\", \"mkdir -p /www && cat /run/secrets/token /motd.txt > /www/index.html && httpd -f -p 80 -h /www\"]\n\
         \x20   ports: [\"8082:80\"]\n\
         \x20   secrets: [token]\n\
         \x20   configs:\n\
         \x20     - source: motd\n\
         \x20       target: /motd.txt\n\
         secrets:\n\
         \x20 token:\n\
         \x20   file: ./token.txt\n\
         configs:\n\
         \x20 motd:\n\
         \x20   file: ./motd.txt\n"
    );
    let file = work.join("compose.yaml");
    std::fs::write(&file, compose).unwrap();
    must(d1(&[
        "stack",
        "deploy",
        "--detach=true",
        "--resolve-image",
        "never",
        "-c",
        file.to_str().unwrap(),
        "st",
    ]));
    wait_until(
        "the stack's service on the host's localhost",
        Duration::from_secs(240),
        || {
            let reply = localhost_get(8082, "/")?;
            (reply.contains("s3cret-token") && reply.contains("hello from a config"))
                .then_some(())
                .ok_or(reply)
        },
    );
    done("stack served");
    let services = must(d1(&["stack", "services", "st", "--format", "{{.Name}}"]));
    assert_eq!(services.trim(), "st_page", "{services}");

    // n2 leaves (its machine stops) and comes back: it rejoins and runs its global task.
    env.rmachine_ok(&["stop", "n2"]);
    wait_until("the manager sees n2 down", Duration::from_secs(120), || {
        let nodes = ok(d1(&["node", "ls", "--format", "{{.Hostname}} {{.Status}}"]))?;
        nodes.contains("n2 Down").then_some(()).ok_or(nodes)
    });
    done("n2 left");
    env.rmachine_ok(&["start", "n2", "--no-use"]);
    wait_until("n2 is back and ready", Duration::from_secs(180), || {
        let nodes = ok(d1(&["node", "ls", "--format", "{{.Hostname}} {{.Status}}"]))?;
        nodes.contains("n2 Ready").then_some(()).ok_or(nodes)
    });
    wait_until(
        "the global service runs on n2 again",
        Duration::from_secs(240),
        on_both("everywhere"),
    );
    done("n2 rejoined");
}
