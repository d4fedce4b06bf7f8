//! Machines on one network (qemu driver, software emulation here): two machines on
//! `rmachine network create lan` reach each other by address and by name over their
//! second NIC (through the network's switch), their containers reach the other machine,
//! the default route stays on the user-mode NIC, a machine that joins later is known by
//! name to the running one, and the switch ends after its last machine stops.

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

    // A machine that joins later: the running ones learn its name.
    let mut args = vec!["create", "n3"];
    args.extend(settings);
    env.rmachine_ok(&args);
    let hosts = shell_ok(&env, "n1", "cat /etc/hosts");
    assert!(
        hosts.contains("192.168.105.4") && hosts.contains("n3"),
        "{hosts}"
    );

    // The switch ends after its last machine stops.
    env.rmachine_ok(&["stop", "n1"]);
    env.rmachine_ok(&["stop", "n2"]);
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
