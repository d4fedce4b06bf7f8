//! The ssh driver end to end, on a real remote host: a Debian trixie VM under QEMU
//! (`rmachine_e2e::remote`), reached over its forwarded sshd. Each test prints the time of
//! each phase.

use std::path::Path;
use std::time::{Duration, Instant};

use rmachine_e2e::remote::{base_image, docker_image, RemoteHost};
use rmachine_e2e::{busybox_tarball, free_local_port, http_get, MachineEnv};

/// Prints how long a phase took.
struct Phases {
    started: Instant,
    last: Instant,
}

impl Phases {
    fn new() -> Phases {
        let now = Instant::now();
        Phases {
            started: now,
            last: now,
        }
    }

    fn done(&mut self, what: &str) {
        let now = Instant::now();
        eprintln!(
            "PHASE {what}: {:.1} s (total {:.1} s)",
            (now - self.last).as_secs_f64(),
            (now - self.started).as_secs_f64()
        );
        self.last = now;
    }
}

fn key_arg(host: &RemoteHost) -> String {
    host.image.key.display().to_string()
}

fn retry<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    while Instant::now() < deadline {
        match f() {
            Ok(v) => return v,
            Err(e) => last = e,
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    panic!("{what} did not happen within {timeout:?}; last error: {last}");
}

fn docker_try(env: &MachineEnv, args: &[&str]) -> Result<String, String> {
    let out = env.docker(args, None, &[]);
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// The busybox image, imported through the machine's socket.
fn import_busybox(env: &MachineEnv) {
    let tar = busybox_tarball(env.dir.path());
    let bytes = std::fs::read(&tar).unwrap();
    env.docker_ok_with(&["import", "-", "rmtest/busybox"], Some(&bytes), &[]);
}

/// The whole path on a host without docker: the refusals first (no sudo, `--install
/// never`), then `create` installs docker.io through the host's apt, and the local
/// endpoint works as a VM machine's: the docker CLI, compose with a published port on
/// this host's loopback, `logs -f`, `exec -it`, the bind-mount refusal, UDP said to be
/// unsupported; stop and start act on the tunnel only; a dropped connection is made
/// again.
#[test]
fn test_create_installs_docker_and_serves_the_local_endpoint() {
    let mut t = Phases::new();
    let image = base_image();
    t.done("base host disk (cached by content hash)");
    let host = RemoteHost::boot(&image);
    t.done("boot the remote host");
    let env = MachineEnv::new();
    let key = key_arg(&host);

    // No sudo: the install is refused, naming the step and the fix.
    let err = env.rmachine_err(&[
        "create",
        "nosudo",
        "--driver",
        "ssh",
        "--ssh-host",
        &host.target("nosudo"),
        "--ssh-key",
        &key,
    ]);
    assert!(
        err.contains("installing the engine") && err.contains("passwordless sudo"),
        "{err}"
    );
    assert!(
        !env.home.join("machines/nosudo").exists(),
        "a failed create leaves nothing"
    );
    // --install never with no engine: refused.
    let err = env.rmachine_err(&[
        "create",
        "never",
        "--ssh-host",
        &host.target("tester"),
        "--ssh-key",
        &key,
        "--install",
        "never",
    ]);
    assert!(
        err.contains("no Docker engine") && err.contains("--install never"),
        "{err}"
    );
    // A key the host does not know: refused, saying what to do.
    let stranger = env.dir.path().join("stranger");
    let status = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&stranger)
        .status()
        .unwrap();
    assert!(status.success());
    let err = env.rmachine_err(&[
        "create",
        "wrongkey",
        "--ssh-host",
        &host.target("tester"),
        "--ssh-key",
        &stranger.display().to_string(),
    ]);
    assert!(
        err.contains("refused every key") && err.contains("--ssh-key"),
        "{err}"
    );
    t.done("refusals (no sudo, --install never, wrong key)");

    // The install through the host's own apt (as a sudo user, who joins the docker group).
    let created = env.rmachine(&[
        "create",
        "far",
        "--driver",
        "ssh",
        "--ssh-host",
        &host.target("tester"),
        "--ssh-key",
        &key,
    ]);
    let stderr = String::from_utf8_lossy(&created.stderr);
    assert!(
        created.status.success(),
        "create failed: {stderr}\n{}",
        host.console_tail()
    );
    assert!(stderr.contains("host key SHA256:"), "{stderr}");
    assert!(stderr.contains("installed docker.io"), "{stderr}");
    let pin = std::fs::read_to_string(env.home.join("machines/far/ssh_host_key")).unwrap();
    assert_eq!(
        pin.split_whitespace().nth(1),
        image.host_key_pub.split_whitespace().nth(1),
        "the pin is the host's key"
    );
    t.done("rmachine create --driver ssh (installs docker.io through apt)");

    env.rmachine_ok(&["start", "far"]);
    t.done("rmachine start (the tunnel)");
    let listed = env.listed("far");
    assert_eq!(listed["host"], host.target("tester"));
    assert_eq!(listed["driver"], "ssh");
    assert!(listed["cpus"].is_null());
    let version = env.docker_ok(&["version", "--format", "{{.Server.Version}}"]);
    assert!(!version.trim().is_empty());
    import_busybox(&env);
    let hi = env.docker_ok(&[
        "run",
        "--rm",
        "rmtest/busybox",
        "echo",
        "hello from the host",
    ]);
    assert_eq!(hi.trim(), "hello from the host");
    t.done("docker version, import, run");

    // compose with a published port, reached on this host's 127.0.0.1.
    let port = free_local_port();
    let project = env.dir.path().join("web");
    std::fs::create_dir_all(&project).unwrap();
    std::fs::write(
        project.join("compose.yaml"),
        format!(
            "services:\n  web:\n    image: rmtest/busybox\n    command: [\"sh\", \"-c\", \"echo served-over-ssh > /www/index.html && httpd -f -p 80 -h /www\"]\n    ports:\n      - \"{port}:80\"\n"
        ),
    )
    .unwrap();
    let compose_file = project.join("compose.yaml").display().to_string();
    env.docker_ok(&["compose", "-f", &compose_file, "-p", "web", "up", "-d"]);
    let body = retry(
        "the published port to answer",
        Duration::from_secs(60),
        || http_get(port, "/"),
    );
    assert_eq!(body.trim(), "served-over-ssh");
    let state = env.state("far");
    let published = state["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["host_port"] == port)
        .cloned()
        .unwrap();
    assert_eq!(published["host_ip"], "127.0.0.1", "{state}");
    t.done("compose up with a published port on 127.0.0.1");

    // logs -f follows until the container ends.
    env.docker_ok(&[
        "run",
        "-d",
        "--name",
        "counter",
        "rmtest/busybox",
        "sh",
        "-c",
        "for i in 1 2 3; do echo line$i; sleep 1; done",
    ]);
    let logs = env.docker_ok(&["logs", "-f", "counter"]);
    assert_eq!(
        logs.lines().collect::<Vec<_>>(),
        ["line1", "line2", "line3"]
    );
    // exec -it through a pty (script(1) gives docker a terminal).
    env.docker_ok(&[
        "run",
        "-d",
        "--name",
        "box",
        "rmtest/busybox",
        "sleep",
        "3600",
    ]);
    let out = std::process::Command::new("script")
        .args([
            "-qec",
            "docker exec -it box sh -c 'tty; echo in-a-terminal'",
            "/dev/null",
        ])
        .env("RMACHINE_HOME", &env.home)
        .env("DOCKER_CONFIG", &env.docker_config)
        .env_remove("DOCKER_HOST")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "exec -it failed: {text}");
    assert!(
        text.contains("/dev/pts/") && text.contains("in-a-terminal"),
        "{text}"
    );
    t.done("logs -f, exec -it");

    // A laptop folder cannot be bound: the engine is remote.
    let home = std::env::var("HOME").unwrap();
    let out = env.docker(
        &[
            "run",
            "--rm",
            "-v",
            &format!("{home}/rmtest-src:/src"),
            "rmtest/busybox",
            "true",
        ],
        None,
        &[],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("ssh machine") && err.contains("no shares over SSH"),
        "{err}"
    );
    // A remote path can.
    env.docker_ok(&[
        "run",
        "--rm",
        "-v",
        "/etc:/host-etc:ro",
        "rmtest/busybox",
        "cat",
        "/host-etc/hostname",
    ]);
    // UDP is said to be unsupported.
    let udp = free_local_port();
    env.docker_ok(&[
        "run",
        "-d",
        "--name",
        "udp",
        "-p",
        &format!("{udp}:53/udp"),
        "rmtest/busybox",
        "sleep",
        "3600",
    ]);
    let status = retry(
        "the udp port to be reported",
        Duration::from_secs(30),
        || {
            let s = env.rmachine_ok(&["status", "far"]);
            if s.contains("UDP is not forwarded over SSH") && s.contains(&format!("{udp}/udp")) {
                Ok(s)
            } else {
                Err(s)
            }
        },
    );
    assert!(status.contains("NOT published"), "{status}");
    t.done("bind mount refused, udp reported");

    // stop: local socket and ports close, the remote's containers run on.
    env.rmachine_ok(&["stop", "far"]);
    let sock = env.home.join("machines/far/docker.sock");
    assert!(!sock.exists(), "the local socket is gone after stop");
    assert!(
        http_get(port, "/").is_err(),
        "the port is closed after stop"
    );
    let remote_ps = host.root_ok("docker ps --format '{{.Names}}'");
    assert!(
        remote_ps.contains("web-web-1") && remote_ps.contains("box"),
        "{remote_ps}"
    );
    env.rmachine_ok(&["start", "far"]);
    let body = retry("the port to come back", Duration::from_secs(60), || {
        http_get(port, "/")
    });
    assert_eq!(body.trim(), "served-over-ssh");
    assert!(env.docker_ok(&["ps"]).contains("box"));
    t.done("stop closes socket and ports, start brings them back");

    // The connection dies (every sshd session killed, sshd restarted): the host agent
    // connects again and docker works again.
    // (pkill -x matches the per-connection process's name, not this command's own line.)
    host.root_ok("setsid nohup sh -c 'sleep 1; pkill -x sshd-session; systemctl restart ssh' >/dev/null 2>&1 </dev/null &");
    std::thread::sleep(Duration::from_secs(3));
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        match docker_try(&env, &["ps", "--format", "{{.Names}}"]) {
            Ok(names) if names.contains("box") => break,
            other if Instant::now() > deadline => panic!(
                "docker ps does not work again after the connection was killed: {other:?}\n--- host agent log ---\n{}\n--- remote sshd ---\n{:?}",
                env.hostagent_log("far"),
                host.ssh("root", "systemctl status ssh --no-pager | tail -5; pgrep -a sshd")
            ),
            _ => std::thread::sleep(Duration::from_millis(500)),
        }
    }
    let log = env.hostagent_log("far");
    assert!(log.contains("ssh connection made again"), "{log}");
    retry(
        "the port after the reconnection",
        Duration::from_secs(60),
        || http_get(port, "/"),
    );
    t.done("reconnect after the connection was killed");

    // rm without --purge-remote leaves the engine alone.
    env.rmachine_ok(&["rm", "-f", "far"]);
    assert_eq!(host.root_ok("systemctl is-active docker").trim(), "active");
    assert!(host
        .root_ok("docker ps --format '{{.Names}}'")
        .contains("box"));
    t.done("rm leaves the remote engine alone");
}

/// An engine that already runs with a container is adopted without restarting it; the
/// machine is exported, removed and imported into a fresh RMACHINE_HOME, which works;
/// a changed host key is then refused.
#[test]
fn test_adopt_export_import_and_changed_host_key() {
    let mut t = Phases::new();
    let image = docker_image();
    t.done("docker host disk (cached by content hash)");
    let host = RemoteHost::boot(&image);
    t.done("boot the remote host");
    let env = MachineEnv::new();
    let key = key_arg(&host);
    // A container runs on the host before rmachine comes.
    let tar = busybox_tarball(env.dir.path());
    let out = std::process::Command::new("ssh")
        .args(["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes", "-i", &key, "-p", "2222"])
        .arg(format!("root@{}", host.addr))
        .arg("docker import - rmtest/busybox && docker run -d --name keep rmtest/busybox sleep 100000")
        .stdin(std::fs::File::open(&tar).unwrap())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let started_before = host.root_ok("docker inspect -f '{{.State.StartedAt}}' keep");
    let dockerd_before = host.root_ok("systemctl show -p MainPID --value docker");

    // The wrong fingerprint for a first use: refused.
    let err = env.rmachine_err(&[
        "create",
        "fp",
        "--ssh-host",
        &host.target("root"),
        "--ssh-key",
        &key,
        "--ssh-host-key",
        "SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    ]);
    assert!(
        err.contains("not SHA256:AAAA") && err.contains("--ssh-host-key"),
        "{err}"
    );
    // The right one: fine.
    let fingerprint = String::from_utf8_lossy(
        &std::process::Command::new("ssh-keygen")
            .arg("-lf")
            .arg("-")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                c.stdin
                    .take()
                    .unwrap()
                    .write_all(image.host_key_pub.as_bytes())?;
                c.wait_with_output()
            })
            .unwrap()
            .stdout,
    )
    .split_whitespace()
    .nth(1)
    .unwrap()
    .to_string();
    let out = env.rmachine_ok(&[
        "create",
        "keep",
        "--ssh-host",
        &host.target("root"),
        "--ssh-key",
        &key,
        "--install",
        "never",
        "--ssh-host-key",
        &fingerprint,
    ]);
    let _ = out;
    env.rmachine_ok(&["start", "keep"]);
    assert!(env
        .docker_ok(&["ps", "--format", "{{.Names}}"])
        .contains("keep"));
    assert_eq!(
        host.root_ok("docker inspect -f '{{.State.StartedAt}}' keep"),
        started_before,
        "the adopted container was not restarted"
    );
    assert_eq!(
        host.root_ok("systemctl show -p MainPID --value docker"),
        dockerd_before,
        "the adopted engine was not restarted"
    );
    t.done("adopt a running engine with --install never");

    // export -> rm -> import into a fresh RMACHINE_HOME.
    let bundle = env.dir.path().join("keep.json");
    env.rmachine_ok(&["export", "keep", &bundle.display().to_string()]);
    env.rmachine_ok(&["rm", "-f", "keep"]);
    let other = MachineEnv::new();
    let out = other.rmachine_ok(&["import", &bundle.display().to_string(), "again"]);
    let _ = out;
    other.rmachine_ok(&["start", "again"]);
    assert!(other
        .docker_ok(&["ps", "--format", "{{.Names}}"])
        .contains("keep"));
    assert_eq!(
        host.root_ok("docker inspect -f '{{.State.StartedAt}}' keep"),
        started_before
    );
    other.rmachine_ok(&["stop", "again"]);
    t.done("export, rm, import into a fresh RMACHINE_HOME");

    // The host gets new host keys: the pinned machine refuses to connect.
    host.root_ok(
        "rm -f /etc/ssh/ssh_host_*key* && ssh-keygen -A >/dev/null && systemctl restart ssh",
    );
    let err = other.rmachine_err(&["start", "again"]);
    assert!(
        err.contains("host key") && err.contains("changed") && err.contains("ssh_host_key"),
        "{err}"
    );
    assert_ne!(other.listed("again")["state"], "running");
    t.done("a changed host key is refused");
}

/// `--engine-tls`: refused on a running engine without `--restart-engine`; with it, the
/// printed env reaches the engine with `docker --tlsverify`, a client certificate of
/// another authority is refused, and after the host's address changes
/// `regenerate-certs` makes the engine's certificate valid for the new one.
#[test]
fn test_engine_tls_env_and_regenerate_certs() {
    let mut t = Phases::new();
    let image = docker_image();
    let mut host = RemoteHost::boot(&image);
    t.done("boot the remote host");
    let env = MachineEnv::new();
    let key = key_arg(&host);
    let err = env.rmachine_err(&[
        "create",
        "tls",
        "--ssh-host",
        &host.target("root"),
        "--ssh-key",
        &key,
        "--engine-tls",
    ]);
    assert!(err.contains("--restart-engine"), "{err}");
    env.rmachine_ok(&[
        "create",
        "tls",
        "--ssh-host",
        &host.target("root"),
        "--ssh-key",
        &key,
        "--engine-tls",
        "--restart-engine",
    ]);
    t.done("create --engine-tls (CA, certificates, systemd drop-in, engine restart)");

    let vars = env_vars(&env, "tls");
    assert_eq!(vars["DOCKER_HOST"], format!("tcp://{}:2376", host.addr));
    assert_eq!(vars["DOCKER_TLS_VERIFY"], "1");
    let certs = vars["DOCKER_CERT_PATH"].clone();
    for f in ["ca.pem", "cert.pem", "key.pem"] {
        assert!(Path::new(&certs).join(f).exists(), "{certs}/{f}");
    }
    let tls_version = |vars: &std::collections::BTreeMap<String, String>| {
        let out = std::process::Command::new("docker")
            .args(["--tlsverify", "version", "--format", "{{.Server.Version}}"])
            .envs(vars.iter())
            .env("DOCKER_CONFIG", &env.docker_config)
            .env_remove("DOCKER_CONTEXT")
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    };
    let v = retry(
        "docker --tlsverify version",
        Duration::from_secs(60),
        || tls_version(&vars),
    );
    assert!(!v.trim().is_empty());
    t.done("docker --tlsverify with the printed env");

    // A client certificate the machine's CA did not sign: refused by the engine.
    let wrong = env.dir.path().join("wrong-certs");
    std::fs::create_dir_all(&wrong).unwrap();
    std::fs::copy(Path::new(&certs).join("ca.pem"), wrong.join("ca.pem")).unwrap();
    let status = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=stranger",
            "-keyout",
        ])
        .arg(wrong.join("key.pem"))
        .arg("-out")
        .arg(wrong.join("cert.pem"))
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let mut wrong_vars = vars.clone();
    wrong_vars.insert("DOCKER_CERT_PATH".into(), wrong.display().to_string());
    let err = tls_version(&wrong_vars).unwrap_err();
    assert!(
        err.to_lowercase().contains("certificate") || err.contains("tls"),
        "{err}"
    );
    t.done("a wrong client certificate is refused");

    // The host's address changes: the old certificate does not name the new address.
    let old_addr = host.addr;
    host.move_to_new_address();
    env.rmachine_ok(&[
        "config",
        "set",
        "-m",
        "tls",
        "ssh-host",
        &host.target("root"),
    ]);
    let vars = env_vars(&env, "tls");
    assert_eq!(vars["DOCKER_HOST"], format!("tcp://{}:2376", host.addr));
    let err = retry(
        "the engine to be up after the move",
        Duration::from_secs(120),
        || match tls_version(&vars) {
            Err(e) if e.contains("certificate") || e.contains("x509") => Ok(e),
            Err(e) => Err(e),
            Ok(v) => panic!(
                "the old certificate was accepted for {} (old {old_addr}): {v}",
                host.addr
            ),
        },
    );
    assert!(
        err.contains(&host.addr.to_string()) || err.contains("valid for"),
        "{err}"
    );
    let out = env.rmachine_ok(&["regenerate-certs", "tls"]);
    let _ = out;
    let client_before = std::fs::read(Path::new(&certs).join("cert.pem")).unwrap();
    retry(
        "docker --tlsverify after regenerate-certs",
        Duration::from_secs(60),
        || tls_version(&vars),
    );
    assert_eq!(
        std::fs::read(Path::new(&certs).join("cert.pem")).unwrap(),
        client_before,
        "the client certificate stays"
    );
    t.done("address change, regenerate-certs");

    // rm --purge-remote takes the TLS setup away (the engine was there before: it stays).
    env.rmachine_ok(&["rm", "--purge-remote", "tls"]);
    assert_eq!(
        host.root_ok("test -e /etc/systemd/system/docker.service.d/rmachine-tls.conf && echo there || echo gone").trim(),
        "gone"
    );
    assert_eq!(host.root_ok("systemctl is-active docker").trim(), "active");
    t.done("rm --purge-remote");
}

/// `rmachine env NAME` (sh syntax) as variables.
fn env_vars(env: &MachineEnv, name: &str) -> std::collections::BTreeMap<String, String> {
    let text = env.rmachine_ok(&["env", name, "--shell", "sh"]);
    text.lines()
        .filter_map(|l| l.strip_prefix("export "))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim_matches('"').to_string()))
        .collect()
}

/// An address where nothing listens: a clear error naming the host, fast.
#[test]
fn test_unreachable_host_is_a_clear_error() {
    let env = MachineEnv::new();
    let port = free_local_port();
    let err = env.rmachine_err(&[
        "create",
        "nowhere",
        "--ssh-host",
        &format!("me@127.0.0.1:{port}"),
    ]);
    assert!(
        err.contains("cannot reach 127.0.0.1") && err.contains("sshd running"),
        "{err}"
    );
    assert!(!env.home.join("machines/nowhere").exists());
}
