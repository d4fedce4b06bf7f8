//! `rmachine-nested-client`: the guest-facing half of the nested-KVM harness
//! (`rmachine_e2e::nested`). It runs inside the L1 VM, next to `rmachine-vmm` or QEMU, and
//! talks to the L2 guest's agent through the VMM's hybrid vsock unix socket (`--uds`:
//! `CONNECT <port>\n`, then the hello line of `rmachine_protocol::hello`) or through AF_VSOCK
//! to QEMU's vhost-vsock guest (`--vsock CID`: the hello line only).
//!
//! Test mode (the `nested_vmm` test; the L1 init starts the VMM right before the client):
//!
//! 1. pings the agent on the control service, retrying until the deadline;
//! 2. sends `GET /version` through the engine service until the engine answers with
//!    `"Version":"26.`;
//! 3. with `--share-dir DIR`: runs a shell in the guest through the exec service that reads
//!    `DIR/hello.txt` (written by L1 into the folder its virtiofsd shares) and writes
//!    `DIR/from-l2.txt` (which L1 checks after the guest is gone);
//! 4. asks the agent to shut the guest down.
//!
//! Bench mode (`--spawn-argv FILE`, the nested benchmark): the client starts the VMM itself
//! from FILE (one argument per line), with its stdout (the guest console) piped to it and
//! copied to `--console-log`, and times from that start: the first console line holding
//! `--init-marker`, the ping, the engine's answer, and, after asking the guest to power off,
//! the VMM's exit (which must come within `--shutdown-timeout-s`, status 0). It then prints
//! `NESTED BENCH label=<label> init_s=… ping_s=… engine_s=… exit_s=…`. On any failure it kills
//! the VMM.
//!
//! Every result is one line on stdout starting with `NESTED `, with the time since the client
//! started; the last line is `NESTED CLIENT OK` or `NESTED CLIENT FAIL <reason>`, and the exit
//! status says the same.
//!
//! Usage: `rmachine-nested-client (--uds PATH | --vsock CID) [--timeout-s N] [--retry-ms N]
//! [--vmm-pid PID] [--share-dir DIR] [--spawn-argv FILE --label NAME [--init-marker TEXT]
//! [--console-log PATH] [--shutdown-timeout-s N]]`
#![forbid(unsafe_code)]

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rmachine_protocol::control::{self, Reply, Request};
use rmachine_protocol::exec::{ExecRequest, GuestFrame, HostFrame};
use rmachine_protocol::{hello, Service};
use socket2::{Domain, SockAddr, Socket, Type};

/// The engine version the guest image ships (Debian trixie's docker.io 26).
const ENGINE_VERSION_PREFIX: &str = "\"Version\":\"26.";
/// How long one attempt may wait for an answer.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(20);
/// What L1 writes into the shared folder, and what the guest must read back.
const SHARE_HELLO: &str = "hello from L1\n";
/// What the guest writes into the shared folder (`from-l2.txt`), checked by L1.
const SHARE_REPLY: &str = "written by L2\n";
/// Pause between attempts, unless `--retry-ms` says otherwise.
const RETRY_PAUSE: Duration = Duration::from_millis(500);
/// How long the VMM may take to exit once the guest was asked to power off (bench mode),
/// unless `--shutdown-timeout-s` says otherwise.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(120);

/// How the client reaches the guest's agent.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Transport {
    /// rmachine-vmm's hybrid vsock unix socket.
    Uds(PathBuf),
    /// AF_VSOCK to this guest CID (QEMU's vhost-vsock).
    Vsock(u32),
}

/// Bench mode: the client starts the VMM itself.
#[derive(Debug, PartialEq, Eq)]
struct Spawn {
    /// The VMM's command, one argument per line.
    argv_file: PathBuf,
    /// Times a file tree's reading and copying in a folder of L1 natively, then in the guest
    /// through the share: `(L1 folder, the same folder's path in the guest)`.
    share_bench: Option<(PathBuf, String)>,
    /// Names the run in the `NESTED BENCH` line.
    label: String,
    /// The console line that shows the guest's init running.
    init_marker: Option<String>,
    /// Where the guest console (the VMM's stdout) is copied; its stderr goes to
    /// `<console_log>.stderr`.
    console_log: PathBuf,
    /// How long the VMM may take to exit once the guest was asked to power off.
    shutdown_timeout: Duration,
}

#[derive(Debug, PartialEq, Eq)]
struct Args {
    transport: Transport,
    timeout: Duration,
    retry: Duration,
    vmm_pid: Option<u32>,
    share_dir: Option<String>,
    spawn: Option<Spawn>,
    /// A host agent's `docker.sock` that must answer `GET /version` too.
    docker_sock: Option<PathBuf>,
    /// Leave the guest running (the caller stops the machine).
    no_shutdown: bool,
    /// rmachine-vmm's API socket, whose balloon must give memory back.
    vmm_api: Option<PathBuf>,
    /// Run a web server container publishing its port 80 on this port of 127.0.0.1 (through
    /// `docker_sock`) and fetch its page there: the host agent's port forwarding.
    publish_port: Option<u16>,
}

fn number<T: std::str::FromStr>(flag: &str, v: &str) -> Result<T, String> {
    v.parse()
        .map_err(|_| format!("{flag}: {v:?} is not a number"))
}

fn parse_args(args: &[String]) -> Result<Args, String> {
    let mut transport = None;
    let mut timeout = Duration::from_secs(600);
    let mut retry = RETRY_PAUSE;
    let mut vmm_pid = None;
    let mut share_dir = None;
    let (mut argv_file, mut label, mut init_marker, mut console_log) = (None, None, None, None);
    let mut shutdown_timeout = None;
    let (mut docker_sock, mut no_shutdown, mut vmm_api) = (None, false, None);
    let mut publish_port = None;
    let mut share_bench = None;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{arg} needs a value"))
        };
        match arg.as_str() {
            "--uds" => transport = Some(Transport::Uds(PathBuf::from(value()?))),
            "--vsock" => transport = Some(Transport::Vsock(number(arg, &value()?)?)),
            "--timeout-s" => timeout = Duration::from_secs(number(arg, &value()?)?),
            "--retry-ms" => retry = Duration::from_millis(number(arg, &value()?)?),
            "--vmm-pid" => vmm_pid = Some(number(arg, &value()?)?),
            "--share-dir" => share_dir = Some(value()?),
            "--docker-sock" => docker_sock = Some(PathBuf::from(value()?)),
            "--no-shutdown" => no_shutdown = true,
            "--vmm-api" => vmm_api = Some(PathBuf::from(value()?)),
            "--publish-port" => publish_port = Some(number(arg, &value()?)?),
            "--share-bench" => {
                let v = value()?;
                let (l1, l2) = v
                    .split_once(':')
                    .ok_or_else(|| format!("--share-bench {v:?}: L1DIR:GUESTDIR"))?;
                share_bench = Some((PathBuf::from(l1), l2.to_string()));
            }
            "--spawn-argv" => argv_file = Some(PathBuf::from(value()?)),
            "--label" => label = Some(value()?),
            "--init-marker" => init_marker = Some(value()?),
            "--console-log" => console_log = Some(PathBuf::from(value()?)),
            "--shutdown-timeout-s" => {
                shutdown_timeout = Some(Duration::from_secs(number(arg, &value()?)?))
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let spawn = match argv_file {
        Some(argv_file) => {
            if vmm_pid.is_some() {
                return Err("--vmm-pid and --spawn-argv exclude each other".into());
            }
            let label = label.ok_or("--spawn-argv needs --label NAME")?;
            Some(Spawn {
                console_log: console_log
                    .unwrap_or_else(|| PathBuf::from(format!("/tmp/{label}-console.log"))),
                argv_file,
                share_bench,
                label,
                init_marker,
                shutdown_timeout: shutdown_timeout.unwrap_or(SHUTDOWN_TIMEOUT),
            })
        }
        None => {
            if label.is_some()
                || share_bench.is_some()
                || init_marker.is_some()
                || console_log.is_some()
                || shutdown_timeout.is_some()
            {
                return Err("--label, --share-bench, --init-marker, --console-log and \
                     --shutdown-timeout-s need --spawn-argv"
                    .into());
            }
            None
        }
    };
    if publish_port.is_some() && docker_sock.is_none() {
        return Err("--publish-port needs --docker-sock".into());
    }
    Ok(Args {
        transport: transport.ok_or("--uds PATH or --vsock CID is required")?,
        timeout,
        retry,
        vmm_pid,
        share_dir,
        spawn,
        docker_sock,
        no_shutdown,
        vmm_api,
        publish_port,
    })
}

/// A byte stream to the guest: a unix socket or an AF_VSOCK socket.
trait Stream: Read + Write {}
impl<T: Read + Write> Stream for T {}

/// A connection to one guest service, after the hello.
type Conn = BufReader<Box<dyn Stream>>;

/// Connects to guest `service` and does the hello: through the VMM's hybrid vsock socket
/// (`CONNECT <port>` first) or AF_VSOCK.
fn connect(transport: &Transport, service: Service) -> Result<Conn, String> {
    let mut reader: Conn = match transport {
        Transport::Uds(uds) => {
            let stream =
                UnixStream::connect(uds).map_err(|e| format!("connect {}: {e}", uds.display()))?;
            stream
                .set_read_timeout(Some(ATTEMPT_TIMEOUT))
                .map_err(|e| format!("set timeout: {e}"))?;
            let mut reader: Conn = BufReader::new(Box::new(stream));
            send(
                &mut reader,
                format!("CONNECT {}\n", service.port()).as_bytes(),
            )?;
            let answer = read_line(&mut reader, "vsock CONNECT answer")?;
            if !answer.starts_with("OK ") {
                return Err(format!("vmm refused port {}: {answer:?}", service.port()));
            }
            reader
        }
        Transport::Vsock(cid) => {
            let socket = Socket::new(Domain::VSOCK, Type::STREAM, None)
                .map_err(|e| format!("AF_VSOCK socket: {e}"))?;
            socket
                .set_read_timeout(Some(ATTEMPT_TIMEOUT))
                .map_err(|e| format!("set timeout: {e}"))?;
            let port = u32::from(service.port());
            socket
                .connect_timeout(&SockAddr::vsock(*cid, port), ATTEMPT_TIMEOUT)
                .map_err(|e| format!("connect vsock {cid}:{port}: {e}"))?;
            BufReader::new(Box::new(socket))
        }
    };
    send(&mut reader, hello::format_hello(service, None).as_bytes())?;
    let answer = read_line(&mut reader, "hello answer")?;
    hello::parse_answer(answer.as_bytes()).map_err(|e| format!("hello refused: {e}"))?;
    Ok(reader)
}

fn send(reader: &mut Conn, bytes: &[u8]) -> Result<(), String> {
    reader
        .get_mut()
        .write_all(bytes)
        .map_err(|e| format!("write: {e}"))
}

fn read_line(reader: &mut Conn, what: &str) -> Result<String, String> {
    let mut line = String::new();
    match reader.read_line(&mut line) {
        Ok(0) => Err(format!("connection closed before the {what}")),
        Ok(_) => Ok(line.trim_end().to_string()),
        Err(e) => Err(format!("reading the {what}: {e}")),
    }
}

/// One control request on a fresh connection.
fn call(transport: &Transport, id: u64, request: Request) -> Result<Reply, String> {
    let mut reader = connect(transport, Service::Control)?;
    send(&mut reader, control::encode_request(id, request).as_bytes())?;
    let line = read_line(&mut reader, "control reply")?;
    control::parse_reply(line.as_bytes(), id).map_err(|e| e.to_string())
}

/// `GET /version` through the engine service; returns the whole HTTP response.
fn engine_version(transport: &Transport) -> Result<Vec<u8>, String> {
    let mut reader = connect(transport, Service::Engine)?;
    send(
        &mut reader,
        b"GET /version HTTP/1.1\r\nHost: rmachine\r\nConnection: close\r\n\r\n",
    )?;
    let mut response = Vec::new();
    reader
        .read_to_end(&mut response)
        .map_err(|e| format!("reading the engine's answer: {e}"))?;
    Ok(response)
}

/// Runs `argv` in the guest through the exec service, stdin closed; returns (exit code,
/// stdout, stderr). The command may stay silent for [`ATTEMPT_TIMEOUT`].
fn exec(transport: &Transport, argv: &[&str]) -> Result<(i32, String, String), String> {
    exec_within(transport, argv, ATTEMPT_TIMEOUT)
}

/// [`exec`] of a command that may run silently for up to `limit`.
fn exec_within(
    transport: &Transport,
    argv: &[&str],
    limit: Duration,
) -> Result<(i32, String, String), String> {
    let started = Instant::now();
    let mut reader = connect(transport, Service::Exec)?;
    let request = ExecRequest {
        argv: argv.iter().map(|a| a.to_string()).collect(),
        ..ExecRequest::default()
    };
    send(&mut reader, request.encode().as_bytes())?;
    send(&mut reader, &HostFrame::Stdin(Vec::new()).encode())?;
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    let mut buf = reader.buffer().to_vec();
    let mut stream = reader.into_inner();
    let mut chunk = [0u8; 4096];
    loop {
        while let Some((frame, used)) =
            GuestFrame::decode(&buf).map_err(|e| format!("bad exec frame: {e}"))?
        {
            buf.drain(..used);
            match frame {
                GuestFrame::Stdout(b) => stdout.extend_from_slice(&b),
                GuestFrame::Stderr(b) => stderr.extend_from_slice(&b),
                GuestFrame::Exit(code) => {
                    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
                    return Ok((code, text(&stdout), text(&stderr)));
                }
                GuestFrame::Error(e) => return Err(format!("exec refused: {e}")),
            }
        }
        match stream.read(&mut chunk) {
            Ok(0) => return Err("exec connection closed before the exit code".into()),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            // The socket's read timeout: the command is still running.
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) && started.elapsed() < limit => {}
            Err(e) => return Err(format!("reading exec frames: {e}")),
        }
    }
}

/// Reads `<dir>/hello.txt` and writes `<dir>/from-l2.txt` in the guest.
fn check_share(transport: &Transport, dir: &str) -> Result<(), String> {
    let script = format!(
        "cat {dir}/hello.txt && printf '%s\\n' 'written by L2' > {dir}/from-l2.txt && grep -w virtiofs /proc/mounts"
    );
    let (code, stdout, stderr) = exec(transport, &["sh", "-c", &script])?;
    if code != 0 {
        return Err(format!("share check exited {code}: {stdout:?} {stderr:?}"));
    }
    if !stdout.starts_with(SHARE_HELLO) {
        return Err(format!(
            "the guest read {stdout:?} from {dir}/hello.txt, not {SHARE_HELLO:?}"
        ));
    }
    println!(
        "NESTED share mounted in L2: {}",
        stdout[SHARE_HELLO.len()..].trim()
    );
    Ok(())
}

/// `GET path` (HTTP/1.1, connection closed after) on a unix socket; the whole response.
fn unix_get(sock: &std::path::Path, path: &str) -> Result<Vec<u8>, String> {
    unix_request(sock, "GET", path, None)
}

/// One HTTP/1.1 request (connection closed after) on a unix socket, with an optional body
/// `(content type, bytes)`; the whole response.
fn unix_request(
    sock: &std::path::Path,
    method: &str,
    path: &str,
    body: Option<(&str, &[u8])>,
) -> Result<Vec<u8>, String> {
    let stream = std::os::unix::net::UnixStream::connect(sock)
        .map_err(|e| format!("connect {}: {e}", sock.display()))?;
    // Both ways: a request body the server stops reading (seen once, an image import
    // through docker.sock that never finished) fails this attempt instead of hanging.
    stream
        .set_read_timeout(Some(ATTEMPT_TIMEOUT))
        .map_err(|e| format!("set timeout: {e}"))?;
    stream
        .set_write_timeout(Some(ATTEMPT_TIMEOUT))
        .map_err(|e| format!("set timeout: {e}"))?;
    let (content_type, bytes) = body.unwrap_or(("text/plain", b""));
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: rmachine\r\nConnection: close\r\n\
         Content-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
        bytes.len()
    )
    .into_bytes();
    request.extend_from_slice(bytes);
    exchange(stream, &request)
}

/// Writes `request` on a connection the server closes after its answer; the whole answer.
fn exchange(mut stream: impl Read + Write, request: &[u8]) -> Result<Vec<u8>, String> {
    stream
        .write_all(request)
        .map_err(|e| format!("write: {e}"))?;
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .map_err(|e| format!("reading the answer: {e}"))?;
    Ok(response)
}

/// The status code of an HTTP response, and its text.
fn http_status(response: &[u8]) -> (u16, String) {
    let text = String::from_utf8_lossy(response).into_owned();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, text)
}

/// The page the published web server serves.
const WEB_PAGE: &str = "served by a container in L2\n";
/// The name of the web server container.
const WEB_CONTAINER: &str = "nested-web";

/// A root filesystem for `docker import`: L1's static busybox and a web page.
fn web_image_tar() -> Result<Vec<u8>, String> {
    let busybox = std::fs::read("/bin/busybox").map_err(|e| format!("read /bin/busybox: {e}"))?;
    let mut tar = tar::Builder::new(Vec::new());
    for (path, mode, data) in [
        ("bin/busybox", 0o755, busybox.as_slice()),
        ("www/index.html", 0o644, WEB_PAGE.as_bytes()),
    ] {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(mode);
        header.set_cksum();
        tar.append_data(&mut header, path, data)
            .map_err(|e| format!("tar {path}: {e}"))?;
    }
    tar.into_inner().map_err(|e| format!("tar: {e}"))
}

/// Imports the web image, creates and starts a container publishing port 80 on
/// 127.0.0.1:`port`, all through the host agent's `docker.sock`.
fn start_web_container(sock: &std::path::Path, port: u16) -> Result<(), String> {
    let tar = web_image_tar()?;
    let (code, text) = http_status(&unix_request(
        sock,
        "POST",
        "/images/create?fromSrc=-&repo=nested-web&tag=1",
        Some(("application/x-tar", &tar)),
    )?);
    if code != 200 || text.contains("errorDetail") {
        return Err(format!("docker import: {text}"));
    }
    // A leftover of an earlier attempt would make the name clash.
    let _ = unix_request(
        sock,
        "DELETE",
        &format!("/containers/{WEB_CONTAINER}?force=1"),
        None,
    );
    let create = format!(
        r#"{{"Image":"nested-web:1","Cmd":["/bin/busybox","httpd","-f","-p","80","-h","/www"],"ExposedPorts":{{"80/tcp":{{}}}},"HostConfig":{{"PortBindings":{{"80/tcp":[{{"HostIp":"127.0.0.1","HostPort":"{port}"}}]}}}}}}"#
    );
    let (code, text) = http_status(&unix_request(
        sock,
        "POST",
        &format!("/containers/create?name={WEB_CONTAINER}"),
        Some(("application/json", create.as_bytes())),
    )?);
    if code != 201 {
        return Err(format!("container create: {text}"));
    }
    let (code, text) = http_status(&unix_request(
        sock,
        "POST",
        &format!("/containers/{WEB_CONTAINER}/start"),
        None,
    )?);
    if code != 204 {
        return Err(format!("container start: {text}"));
    }
    Ok(())
}

/// `GET /` from 127.0.0.1:`port`; Ok when the answer carries the container's page.
fn fetch_published_page(port: u16) -> Result<(), String> {
    let stream = std::net::TcpStream::connect(("127.0.0.1", port))
        .map_err(|e| format!("connect 127.0.0.1:{port}: {e}"))?;
    stream
        .set_read_timeout(Some(ATTEMPT_TIMEOUT))
        .map_err(|e| format!("set timeout: {e}"))?;
    let response = exchange(stream, b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let (code, text) = http_status(&response);
    if code == 200 && text.ends_with(WEB_PAGE) {
        Ok(())
    } else {
        Err(format!("127.0.0.1:{port} answered {text:?}"))
    }
}

/// `discarded_bytes` of the balloon device in rmachine-vmm's `GET /metrics` answer.
fn balloon_discarded_bytes(metrics: &str) -> Option<u64> {
    let balloon = &metrics[metrics.find("\"balloon\"")?..];
    let key = "\"discarded_bytes\":";
    let digits = &balloon[balloon.find(key)? + key.len()..];
    digits
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// Checks an HTTP response to `GET /version`: status 200 and the expected engine version.
/// Returns the engine version.
fn check_version_response(response: &[u8]) -> Result<String, String> {
    let text = String::from_utf8_lossy(response);
    let status = text.lines().next().unwrap_or_default();
    if !status.starts_with("HTTP/1.1 200") {
        return Err(format!("engine answered {status:?}"));
    }
    let Some(at) = text.find(ENGINE_VERSION_PREFIX) else {
        return Err(format!(
            "no {ENGINE_VERSION_PREFIX} in the engine's answer: {text:?}"
        ));
    };
    let version = &text[at + "\"Version\":\"".len()..];
    Ok(version.split('"').next().unwrap_or_default().to_string())
}

/// Whether `/proc/<pid>/stat` shows a live (not zombie) process.
fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat_state(&stat) != Some('Z'),
        Err(_) => false,
    }
}

/// The state letter of a `/proc/<pid>/stat` line (the field after the parenthesized name).
fn stat_state(stat: &str) -> Option<char> {
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

struct Client {
    args: Args,
    started: Instant,
    deadline: Instant,
    /// The VMM whose death ends the retries, and what to call it.
    vmm: Option<(u32, String)>,
}

impl Client {
    fn new(args: Args, started: Instant) -> Client {
        Client {
            deadline: started + args.timeout,
            vmm: args.vmm_pid.map(|pid| (pid, "rmachine-vmm".to_string())),
            args,
            started,
        }
    }

    fn elapsed_s(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// Runs `attempt` until it succeeds, the deadline passes, or the VMM dies.
    fn retry<T>(
        &self,
        what: &str,
        mut attempt: impl FnMut() -> Result<T, String>,
    ) -> Result<(T, u32), String> {
        let mut tries = 0;
        let mut last = String::from("no attempt made");
        loop {
            if let Some((pid, name)) = &self.vmm {
                if !process_alive(*pid) {
                    return Err(format!(
                        "{what}: {name} (pid {pid}) exited after {:.3}s (last error: {last})",
                        self.elapsed_s()
                    ));
                }
            }
            if Instant::now() >= self.deadline {
                return Err(format!(
                    "{what}: no success within {:?} after {tries} attempts (last error: {last})",
                    self.args.timeout
                ));
            }
            tries += 1;
            match attempt() {
                Ok(v) => return Ok((v, tries)),
                Err(e) => {
                    if e != last {
                        println!(
                            "NESTED {what} attempt {tries} at {:.3}s: {e}",
                            self.elapsed_s()
                        );
                    }
                    last = e;
                }
            }
            std::thread::sleep(self.args.retry);
        }
    }

    /// Pings the agent until it answers; returns the time and the attempts.
    fn ping(&self) -> Result<(f64, u32), String> {
        let transport = &self.args.transport;
        let (_, tries) = self.retry("ping", || match call(transport, 1, Request::Ping {})? {
            Reply::Pong => Ok(()),
            other => Err(format!("ping answered {other:?}")),
        })?;
        Ok((self.elapsed_s(), tries))
    }

    /// Asks the engine its version until it answers; returns the time, the version and the
    /// attempts.
    fn engine(&self) -> Result<(f64, String, u32), String> {
        let transport = &self.args.transport;
        let (version, tries) = self.retry("engine", || {
            check_version_response(&engine_version(transport)?)
        })?;
        Ok((self.elapsed_s(), version, tries))
    }

    fn shutdown(&self) -> Result<(), String> {
        match call(&self.args.transport, 2, Request::Shutdown { reboot: false })? {
            Reply::ShuttingDown => {
                println!("NESTED shutdown requested at {:.3}s", self.elapsed_s());
                Ok(())
            }
            other => Err(format!("shutdown answered {other:?}")),
        }
    }

    /// Test mode: ping, engine, share, shutdown.
    fn run(&self) -> Result<(), String> {
        let (at, tries) = self.ping()?;
        println!("NESTED TIMING l2_ping_s={at:.3} (attempts {tries})");

        let (at, version, tries) = self.engine()?;
        println!("NESTED TIMING l2_docker_version_s={at:.3} (engine {version}, attempts {tries})");

        if let Some(dir) = self.args.share_dir.clone() {
            let transport = &self.args.transport;
            let (_, tries) = self.retry("share", || check_share(transport, &dir))?;
            println!(
                "NESTED TIMING l2_share_s={:.3} (attempts {tries}; {SHARE_REPLY:?} written)",
                self.elapsed_s()
            );
        }
        if let Some(sock) = self.args.docker_sock.clone() {
            let (version, tries) = self.retry("docker.sock", || {
                check_version_response(&unix_get(&sock, "/version")?)
            })?;
            println!(
                "NESTED TIMING docker_sock_s={:.3} (engine {version} through {}, attempts {tries})",
                self.elapsed_s(),
                sock.display()
            );
        }
        if let (Some(sock), Some(port)) = (self.args.docker_sock.clone(), self.args.publish_port) {
            let (_, tries) = self.retry("web container", || start_web_container(&sock, port))?;
            println!(
                "NESTED TIMING web_container_s={:.3} (imported, created, started; attempts {tries})",
                self.elapsed_s()
            );
            let (_, tries) = self.retry("published port", || fetch_published_page(port))?;
            println!(
                "NESTED TIMING published_port_s={:.3} (127.0.0.1:{port} served the container's page, attempts {tries})",
                self.elapsed_s()
            );
            let (code, text) = http_status(&unix_request(
                &sock,
                "DELETE",
                &format!("/containers/{WEB_CONTAINER}?force=1"),
                None,
            )?);
            if code != 204 {
                return Err(format!("container remove: {text}"));
            }
        }
        if let Some(api) = self.args.vmm_api.clone() {
            let (bytes, tries) = self.retry("balloon", || {
                let body = unix_get(&api, "/metrics")?;
                match balloon_discarded_bytes(&String::from_utf8_lossy(&body)) {
                    Some(n) if n > 0 => Ok(n),
                    other => Err(format!("no memory given back yet ({other:?} bytes)")),
                }
            })?;
            println!(
                "NESTED TIMING balloon_s={:.3} (free page reporting gave {} MiB back to L1, attempts {tries})",
                self.elapsed_s(),
                bytes >> 20
            );
        }
        if self.args.no_shutdown {
            println!("NESTED guest left running at {:.3}s", self.elapsed_s());
            return Ok(());
        }
        self.shutdown()
    }
}

/// The VMM the client started, killed and reaped when dropped unless it has exited.
struct VmmProcess(Child);

impl Drop for VmmProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// The arguments of a command, one a line (empty lines skipped).
fn parse_argv(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// The guest clock stamp a console line starts with (`[    2.610853] …`, the kernel's and the
/// agent's format), in seconds.
fn guest_stamp(line: &str) -> Option<f64> {
    let (_, rest) = line.split_once('[')?;
    rest.split_once(']')?.0.trim().parse().ok()
}

/// Copies the guest console (the VMM's stdout) to `log` line by line; sends the time of the
/// first line holding `marker` (seconds since `started`) and the guest's own stamp on it.
fn copy_console(
    stdout: impl Read,
    mut log: File,
    marker: Option<String>,
    started: Instant,
    found: mpsc::Sender<(f64, Option<f64>)>,
) {
    let mut reader = BufReader::new(stdout);
    let mut line = Vec::new();
    let mut marker = marker;
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                let at = started.elapsed().as_secs_f64();
                let _ = log.write_all(&line);
                let text = String::from_utf8_lossy(&line);
                if marker.as_deref().is_some_and(|m| text.contains(m)) {
                    marker = None;
                    let _ = found.send((at, guest_stamp(&text)));
                }
            }
        }
    }
}

/// The share benchmark's tree: folders, files in each, bytes in each file.
const BENCH_TREE: (usize, usize, usize) = (10, 20, 4096);
/// Timed repetitions of each share workload (the median is reported).
const SHARE_BENCH_REPEATS: usize = 3;

/// Makes `dir/tree` (see [`BENCH_TREE`]) unless it is there; returns its size in bytes.
fn make_bench_tree(dir: &std::path::Path) -> Result<u64, String> {
    let (dirs, files, size) = BENCH_TREE;
    let tree = dir.join("tree");
    for d in 0..dirs {
        let sub = tree.join(format!("d{d:03}"));
        std::fs::create_dir_all(&sub).map_err(|e| format!("create {}: {e}", sub.display()))?;
        for f in 0..files {
            let path = sub.join(format!("f{f:03}.txt"));
            if !path.exists() {
                let byte = b'a' + ((d + f) % 26) as u8;
                std::fs::write(&path, vec![byte; size])
                    .map_err(|e| format!("write {}: {e}", path.display()))?;
            }
        }
    }
    Ok((dirs * files * size) as u64)
}

/// Times the share workloads in `dir` (its `tree`, see [`make_bench_tree`]) with `run`, which
/// runs a shell command and returns its stdout: reading every file (`find … -exec cat`), and
/// copying the tree (`cp -r`), each the median of [`SHARE_BENCH_REPEATS`] after an untimed read.
fn time_share_workloads(
    dir: &str,
    bytes: u64,
    mut run: impl FnMut(&str) -> Result<String, String>,
) -> Result<(f64, f64), String> {
    let read = format!("find {dir}/tree -type f -exec cat {{}} + | wc -c");
    let mut timed_read = || -> Result<f64, String> {
        let t = Instant::now();
        let out = run(&read)?;
        let took = t.elapsed().as_secs_f64();
        println!("NESTED share read of {dir}/tree: {took:.3}s");
        match out.trim().parse::<u64>() {
            Ok(n) if n == bytes => Ok(took),
            _ => Err(format!("{read:?} gave {out:?}, not {bytes}")),
        }
    };
    timed_read()?;
    let mut reads = (0..SHARE_BENCH_REPEATS)
        .map(|_| timed_read())
        .collect::<Result<Vec<_>, _>>()?;
    let mut writes = Vec::new();
    for _ in 0..SHARE_BENCH_REPEATS {
        run(&format!("rm -rf {dir}/copy"))?;
        let t = Instant::now();
        run(&format!("cp -r {dir}/tree {dir}/copy"))?;
        writes.push(t.elapsed().as_secs_f64());
        println!(
            "NESTED share copy of {dir}/tree: {:.3}s",
            t.elapsed().as_secs_f64()
        );
    }
    run(&format!("rm -rf {dir}/copy"))?;
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    Ok((median(&mut reads), median(&mut writes)))
}

/// Runs `sh -c script` here (in L1); its stdout, or why it failed.
fn run_native(script: &str) -> Result<String, String> {
    let out = Command::new("sh")
        .args(["-c", script])
        .output()
        .map_err(|e| format!("sh -c {script:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "sh -c {script:?}: {} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// How long one share workload may run in the guest (nested virtio-fs is slow under TCG).
const SHARE_WORKLOAD_TIMEOUT: Duration = Duration::from_secs(600);

/// Runs `sh -c script` in the guest through the exec service; its stdout, or why it failed.
fn run_in_guest(transport: &Transport, script: &str) -> Result<String, String> {
    let (code, stdout, stderr) =
        exec_within(transport, &["sh", "-c", script], SHARE_WORKLOAD_TIMEOUT)?;
    if code != 0 {
        return Err(format!(
            "in the guest, sh -c {script:?}: exit {code} {stderr}"
        ));
    }
    Ok(stdout)
}

/// Bench mode: starts the VMM, times the guest's init, ping and engine, powers the guest off
/// and times the VMM's exit.
fn bench(args: Args, spawn: &Spawn) -> Result<(), String> {
    let argv_text = std::fs::read_to_string(&spawn.argv_file)
        .map_err(|e| format!("read {}: {e}", spawn.argv_file.display()))?;
    let argv = parse_argv(&argv_text);
    let Some((program, rest)) = argv.split_first() else {
        return Err(format!("{} holds no command", spawn.argv_file.display()));
    };
    let log = File::create(&spawn.console_log)
        .map_err(|e| format!("create {}: {e}", spawn.console_log.display()))?;
    let stderr_path = format!("{}.stderr", spawn.console_log.display());
    let stderr = File::create(&stderr_path).map_err(|e| format!("create {stderr_path}: {e}"))?;
    let label = spawn.label.clone();

    // The share workloads natively first, on the same tree the guest reads later.
    let share = match &spawn.share_bench {
        Some((l1_dir, l2_dir)) => {
            let bytes = make_bench_tree(l1_dir)?;
            let (read, write) =
                time_share_workloads(&l1_dir.display().to_string(), bytes, run_native)?;
            println!("NESTED {label} native share workloads: read {read:.3}s, copy {write:.3}s");
            Some((l2_dir.clone(), bytes, read, write))
        }
        None => None,
    };

    let started = Instant::now();
    let mut vmm = VmmProcess(
        Command::new(program)
            .args(rest)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .map_err(|e| format!("start {program}: {e}"))?,
    );
    let stdout = vmm.0.stdout.take().ok_or("the VMM's stdout is not piped")?;
    let (found, init_seen) = mpsc::channel();
    let marker = spawn.init_marker.clone();
    let console = std::thread::spawn(move || copy_console(stdout, log, marker, started, found));
    let mut client = Client::new(args, started);
    client.vmm = Some((vmm.0.id(), label.clone()));
    println!("NESTED {label} started (pid {})", vmm.0.id());

    let (init_s, guest_init_s) = match &spawn.init_marker {
        Some(marker) => loop {
            match init_seen.recv_timeout(Duration::from_millis(200)) {
                Ok(at) => break at,
                Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() < client.deadline => {
                    if let Ok(Some(status)) = vmm.0.try_wait() {
                        return Err(format!(
                            "init: {label} exited ({status}) after {:.3}s before {marker:?}",
                            client.elapsed_s()
                        ));
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    return Err(format!(
                        "init: no {marker:?} within {:?}",
                        client.args.timeout
                    ))
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(format!(
                        "init: the console of {label} closed after {:.3}s before {marker:?}",
                        client.elapsed_s()
                    ))
                }
            }
        },
        None => (f64::NAN, None),
    };
    // The guest's clock starts early in its kernel: the rest of init_s came before (the VMM's
    // own start, firmware, loading and decompressing the kernel).
    let guest_init = match guest_init_s {
        Some(g) => format!(" guest_init_s={g:.3}"),
        None => String::new(),
    };
    println!("NESTED {label} init at {init_s:.3}s (guest clock{guest_init})");
    let (ping_s, _) = client.ping()?;
    println!("NESTED {label} ping at {ping_s:.3}s");
    let (engine_s, version, _) = client.engine()?;
    println!("NESTED {label} engine {version} at {engine_s:.3}s");
    let share_figures = match share {
        Some((l2_dir, bytes, native_read, native_write)) => {
            let transport = client.args.transport.clone();
            let (read, write) =
                time_share_workloads(&l2_dir, bytes, |script| run_in_guest(&transport, script))?;
            println!(
                "NESTED {label} share workloads in the guest: read {read:.3}s, copy {write:.3}s"
            );
            format!(
                " share_read_s={read:.3} share_write_s={write:.3} \
                 native_read_s={native_read:.3} native_write_s={native_write:.3}"
            )
        }
        None => String::new(),
    };
    client.shutdown()?;

    let asked = Instant::now();
    let status = loop {
        match vmm.0.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if asked.elapsed() < spawn.shutdown_timeout => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Ok(None) => {
                return Err(format!(
                    "{label} still running {:?} after the guest was asked to power off",
                    spawn.shutdown_timeout
                ))
            }
            Err(e) => return Err(format!("waiting for {label}: {e}")),
        }
    };
    let exit_s = client.elapsed_s();
    let _ = console.join();
    if !status.success() {
        return Err(format!("{label} exited with {status} after the power-off"));
    }
    println!(
        "NESTED BENCH label={label} init_s={init_s:.3}{guest_init} ping_s={ping_s:.3} \
         engine_s={engine_s:.3} exit_s={exit_s:.3}{share_figures}"
    );
    Ok(())
}

fn main() -> std::process::ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut args = match parse_args(&argv) {
        Ok(a) => a,
        Err(e) => {
            println!("NESTED CLIENT FAIL usage: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let result = match args.spawn.take() {
        Some(spawn) => bench(args, &spawn),
        None => Client::new(args, Instant::now()).run(),
    };
    match result {
        Ok(()) => {
            println!("NESTED CLIENT OK");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            println!("NESTED CLIENT FAIL {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn test_balloon_discarded_bytes() {
        let m = r#"{"devices":{"rng":{"kind":"rng","device":{"discarded_bytes":7}},"balloon":{"kind":"balloon","device":{"reports":3,"discarded_bytes":123456}}}}"#;
        assert_eq!(balloon_discarded_bytes(m), Some(123456));
        assert_eq!(balloon_discarded_bytes(r#"{"devices":{}}"#), None);
    }

    #[test]
    fn test_parse_args() {
        let a = parse_args(&strings(&[
            "--uds",
            "/tmp/v.sock",
            "--timeout-s",
            "30",
            "--vmm-pid",
            "42",
        ]))
        .unwrap();
        assert_eq!(
            a,
            Args {
                transport: Transport::Uds("/tmp/v.sock".into()),
                timeout: Duration::from_secs(30),
                retry: RETRY_PAUSE,
                vmm_pid: Some(42),
                share_dir: None,
                spawn: None,
                docker_sock: None,
                no_shutdown: false,
                vmm_api: None,
                publish_port: None,
            }
        );
        assert!(parse_args(&strings(&["--timeout-s", "1"])).is_err());
        assert!(parse_args(&strings(&["--uds"])).is_err());
        assert!(parse_args(&strings(&["--uds", "x", "--bogus"])).is_err());
        let err = parse_args(&strings(&["--uds", "x", "--publish-port", "8080"])).unwrap_err();
        assert!(err.contains("--docker-sock"), "{err}");
    }

    #[test]
    fn test_web_image_holds_busybox_and_the_page() {
        if !std::path::Path::new("/bin/busybox").exists() {
            eprintln!("SKIPPED: no /bin/busybox here (L1 always has it)");
            return;
        }
        let tar = web_image_tar().unwrap();
        let mut archive = tar::Archive::new(tar.as_slice());
        let entries: Vec<(String, u32, u64)> = archive
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let h = e.header();
                (
                    e.path().unwrap().display().to_string(),
                    h.mode().unwrap(),
                    h.size().unwrap(),
                )
            })
            .collect();
        assert_eq!(entries.len(), 2, "{entries:?}");
        assert_eq!(entries[0].0, "bin/busybox");
        assert_eq!(entries[0].1, 0o755);
        assert!(entries[0].2 > 100_000, "{entries:?}");
        assert_eq!(
            (entries[1].0.as_str(), entries[1].1, entries[1].2),
            ("www/index.html", 0o644, WEB_PAGE.len() as u64)
        );
    }

    #[test]
    fn test_parse_bench_args() {
        let a = parse_args(&strings(&[
            "--vsock",
            "3",
            "--label",
            "qemu",
            "--spawn-argv",
            "/etc/nested/qemu.argv",
            "--init-marker",
            "rmachine-agent starting as PID 1",
            "--retry-ms",
            "200",
            "--share-bench",
            "/share:/home/nested-share",
        ]))
        .unwrap();
        assert_eq!(a.transport, Transport::Vsock(3));
        assert_eq!(a.retry, Duration::from_millis(200));
        assert_eq!(
            a.spawn,
            Some(Spawn {
                argv_file: "/etc/nested/qemu.argv".into(),
                share_bench: Some(("/share".into(), "/home/nested-share".into())),
                label: "qemu".into(),
                init_marker: Some("rmachine-agent starting as PID 1".into()),
                console_log: "/tmp/qemu-console.log".into(),
                shutdown_timeout: SHUTDOWN_TIMEOUT,
            })
        );
        // Bench options without --spawn-argv, a spawn without a label, both VMM sources.
        assert!(parse_args(&strings(&["--vsock", "3", "--label", "x"])).is_err());
        assert!(parse_args(&strings(&["--vsock", "3", "--spawn-argv", "f"])).is_err());
        assert!(parse_args(&strings(&[
            "--uds",
            "u",
            "--vmm-pid",
            "1",
            "--spawn-argv",
            "f",
            "--label",
            "x"
        ]))
        .is_err());
        assert!(parse_args(&strings(&["--vsock", "three"])).is_err());
        assert!(parse_args(&strings(&["--vsock", "3", "--share-bench", "/a:/b"])).is_err());
        let err = parse_args(&strings(&[
            "--vsock",
            "3",
            "--spawn-argv",
            "f",
            "--label",
            "x",
            "--share-bench",
            "/share",
        ]))
        .unwrap_err();
        assert!(err.contains("L1DIR:GUESTDIR"), "{err}");
    }

    #[test]
    fn test_share_workloads_run_natively_on_the_bench_tree() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = make_bench_tree(dir.path()).unwrap();
        let (dirs, files, size) = BENCH_TREE;
        assert_eq!(bytes, (dirs * files * size) as u64);
        // A second call keeps the tree.
        assert_eq!(make_bench_tree(dir.path()).unwrap(), bytes);
        let d = dir.path().display().to_string();
        let (read, write) = time_share_workloads(&d, bytes, run_native).unwrap();
        assert!(read > 0.0 && write > 0.0, "{read} {write}");
        // The copies are gone; a wrong size is an error, not a figure.
        assert!(!dir.path().join("copy").exists());
        let err = time_share_workloads(&d, bytes + 1, run_native).unwrap_err();
        assert!(err.contains("not"), "{err}");
    }

    #[test]
    fn test_parse_argv_keeps_spaces_inside_arguments() {
        assert_eq!(
            parse_argv("/usr/bin/qemu\n-append\nconsole=ttyS0 quiet\n\n"),
            ["/usr/bin/qemu", "-append", "console=ttyS0 quiet"]
        );
    }

    #[test]
    fn test_bench_mode_times_a_spawned_console() {
        let (tx, rx) = mpsc::channel();
        let dir = std::env::temp_dir().join(format!("nested-client-c-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("console.log");
        let console = b"[0.1] kernel\n\xff[2.6] INFO rmachine-agent starting as PID 1\nmore\n";
        copy_console(
            &console[..],
            File::create(&log).unwrap(),
            Some("rmachine-agent starting as PID 1".into()),
            Instant::now(),
            tx,
        );
        let (at, stamp) = rx.try_recv().unwrap();
        assert!(at >= 0.0);
        assert_eq!(stamp, Some(2.6));
        assert!(rx.try_recv().is_err(), "one time per marker");
        assert_eq!(std::fs::read(&log).unwrap(), console);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn test_guest_stamp() {
        assert_eq!(
            guest_stamp("\u{fffd}[    2.610853]  INFO rmachine-agent starting"),
            Some(2.610853)
        );
        assert_eq!(guest_stamp("no stamp"), None);
        assert_eq!(guest_stamp("[x] y"), None);
    }

    #[test]
    fn test_check_version_response() {
        let ok = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n\
            {\"Platform\":{\"Name\":\"\"},\"Components\":[{\"Name\":\"Engine\",\"Version\":\"26.1.5+dfsg1\"}],\"Version\":\"26.1.5+dfsg1\"}";
        assert_eq!(check_version_response(ok).unwrap(), "26.1.5+dfsg1");
        let old = b"HTTP/1.1 200 OK\r\n\r\n{\"Version\":\"20.10.24\"}";
        assert!(check_version_response(old).is_err());
        let err = b"HTTP/1.1 500 Internal Server Error\r\n\r\n{\"Version\":\"26.1\"}";
        assert!(check_version_response(err).unwrap_err().contains("500"));
        assert!(check_version_response(b"").is_err());
    }

    #[test]
    fn test_stat_state() {
        assert_eq!(stat_state("42 (rmachine-vmm) S 1 42 42"), Some('S'));
        assert_eq!(stat_state("42 (a) b) Z 1"), Some('Z'));
        assert_eq!(stat_state("garbage"), None);
        assert!(process_alive(std::process::id()));
    }

    #[test]
    fn test_connect_speaks_hybrid_vsock_then_hello() {
        let dir = std::env::temp_dir().join(format!("nested-client-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("v.sock");
        let _ = std::fs::remove_file(&path);
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut r = BufReader::new(stream);
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            assert_eq!(line, "CONNECT 1024\n");
            r.get_mut().write_all(b"OK 1073741824\n").unwrap();
            line.clear();
            r.read_line(&mut line).unwrap();
            assert_eq!(line, hello::format_hello(Service::Control, None));
            r.get_mut()
                .write_all(hello::format_ok().as_bytes())
                .unwrap();
            line.clear();
            r.read_line(&mut line).unwrap();
            let env = control::parse_request(line.trim_end().as_bytes()).unwrap();
            assert_eq!(env.request, Request::Ping {});
            r.get_mut()
                .write_all(
                    control::encode_reply(env.id, control::Outcome::Ok(Reply::Pong)).as_bytes(),
                )
                .unwrap();
        });
        assert_eq!(
            call(&Transport::Uds(path), 7, Request::Ping {}).unwrap(),
            Reply::Pong
        );
        server.join().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
