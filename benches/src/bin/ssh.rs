//! ssh machines benchmark, on the test harness's remote host (a Debian trixie VM with
//! docker.io under QEMU, `rmachine_e2e::remote`):
//! - `GET /version` round trip through the ssh machine's local `docker.sock` (the host
//!   agent's one SSH connection, a direct-streamlocal channel per request) against the
//!   docker CLI's own `ssh://` transport to the same host (`ssh … docker system
//!   dial-stdio`, a new ssh process per connection, as `docker -H ssh://…` does); the
//!   median of BENCH_ROUNDS (100) each, a new connection every time;
//! - published-port throughput (BENCH_MIB, 16 MiB, per download; the median of 3) through
//!   rmachine's forward against an `ssh -L` forward of the same container port.
//!
//! `cargo run --profile benchmark -p rmachine-bench --bin ssh`

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rmachine_bench::{env_num, median, report};
use rmachine_e2e::remote::{docker_image, RemoteHost, SSH_PORT};
use rmachine_e2e::{busybox_tarball, free_local_port, MachineEnv};

const M: &str = "far";
const REQUEST: &[u8] = b"GET /version HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n";

fn ssh_args(host: &RemoteHost) -> Vec<String> {
    [
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "BatchMode=yes",
        "-o",
        "LogLevel=ERROR",
        "-i",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([
        host.image.key.display().to_string(),
        "-p".into(),
        SSH_PORT.to_string(),
        format!("root@{}", host.addr),
    ])
    .collect()
}

fn check_version_reply(out: &[u8]) {
    assert!(
        out.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&out[..out.len().min(300)])
    );
}

/// `GET /version` on a new connection to the machine's local socket.
fn via_socket(socket: &Path) -> Duration {
    let t = Instant::now();
    let mut s = UnixStream::connect(socket).expect("connect to docker.sock");
    s.write_all(REQUEST).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    check_version_reply(&out);
    t.elapsed()
}

/// `GET /version` the way `docker -H ssh://…` reaches an engine: a new `ssh` process
/// running `docker system dial-stdio` on the host, the request on its stdin.
fn via_dial_stdio(host: &RemoteHost) -> Duration {
    let t = Instant::now();
    let mut child = Command::new("ssh")
        .args(ssh_args(host))
        .args(["-T", "--", "docker", "system", "dial-stdio"])
        .env_remove("SSH_AUTH_SOCK")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run ssh");
    child.stdin.as_mut().unwrap().write_all(REQUEST).unwrap();
    let mut out = Vec::new();
    let mut stdout = child.stdout.take().unwrap();
    // The engine closes after the answer (Connection: close); dial-stdio then ends.
    let _ = stdout.read_to_end(&mut out);
    drop(child.stdin.take());
    let _ = child.wait();
    check_version_reply(&out);
    t.elapsed()
}

/// Downloads `/blob` from 127.0.0.1:`port`; MiB/s.
fn download(port: u16, mib: u64) -> f64 {
    let t = Instant::now();
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.write_all(b"GET /blob HTTP/1.0\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut total = 0u64;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = s.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    assert!(
        total >= mib << 20,
        "short download: {total} bytes of {} MiB",
        mib
    );
    (total as f64 / (1 << 20) as f64) / t.elapsed().as_secs_f64()
}

fn median_f(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    rmachine_bench::build_rmachine();
    let rounds = env_num("BENCH_ROUNDS", 100) as usize;
    let mib = env_num("BENCH_MIB", 16);
    let host = RemoteHost::boot(&docker_image());
    let env = MachineEnv::new();
    let key = host.image.key.display().to_string();
    env.rmachine_ok(&[
        "create",
        M,
        "--ssh-host",
        &host.target("root"),
        "--ssh-key",
        &key,
        "--install",
        "never",
    ]);
    env.rmachine_ok(&["start", M]);
    let socket = env.home.join("machines").join(M).join("docker.sock");

    // Warm both paths once, then alternate so that drift in the VM hits both alike.
    via_socket(&socket);
    via_dial_stdio(&host);
    let mut local = Vec::with_capacity(rounds);
    let mut dial = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        local.push(via_socket(&socket));
        dial.push(via_dial_stdio(&host));
    }
    let (local, dial) = (median(local), median(dial));
    report(
        "GET /version via the ssh machine's docker.sock",
        &format!("{:.2} ms", local.as_secs_f64() * 1000.0),
        &format!("median of {rounds}, new connection each"),
    );
    report(
        "GET /version via docker's ssh:// transport (ssh … docker system dial-stdio)",
        &format!("{:.2} ms", dial.as_secs_f64() * 1000.0),
        &format!("median of {rounds}, new ssh process each"),
    );
    report(
        "round trip ratio (ssh:// / rmachine)",
        &format!("{:.1}x", dial.as_secs_f64() / local.as_secs_f64()),
        "higher is better for rmachine",
    );

    // Published port: a container serves a blob; rmachine's forward vs `ssh -L`.
    let tar = busybox_tarball(env.dir.path());
    env.docker_ok_with(
        &["import", "-", "rmtest/busybox"],
        Some(&std::fs::read(&tar).unwrap()),
        &[],
    );
    let port = free_local_port();
    env.docker_ok(&[
        "run", "-d", "--name", "blob", "-p", &format!("{port}:80"), "rmtest/busybox", "sh", "-c",
        &format!("dd if=/dev/urandom of=/www/blob bs=1M count={mib} 2>/dev/null && httpd -f -p 80 -h /www"),
    ]);
    let deadline = Instant::now() + Duration::from_secs(120);
    while rmachine_e2e::http_get(port, "/").is_err() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
    }
    let forward = free_local_port();
    let mut tunnel = Command::new("ssh")
        .args(ssh_args(&host))
        .args(["-N", "-L", &format!("127.0.0.1:{forward}:127.0.0.1:{port}")])
        .env_remove("SSH_AUTH_SOCK")
        .stdin(Stdio::null())
        .spawn()
        .expect("run ssh -L");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", forward)).is_err() && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    for _ in 0..3 {
        ours.push(download(port, mib));
        theirs.push(download(forward, mib));
    }
    let _ = tunnel.kill();
    let _ = tunnel.wait();
    let (ours, theirs) = (median_f(ours), median_f(theirs));
    report(
        "published port throughput via rmachine (direct-tcpip on the host agent's connection)",
        &format!("{ours:.1} MiB/s"),
        &format!("{mib} MiB, median of 3"),
    );
    report(
        "published port throughput via ssh -L",
        &format!("{theirs:.1} MiB/s"),
        &format!("{mib} MiB, median of 3"),
    );
    report(
        "throughput ratio (rmachine / ssh -L)",
        &format!("{:.2}", ours / theirs),
        "",
    );
    env.rmachine_ok(&["stop", M]);
}
