//! `rmachine-nested-client`: the guest-facing half of the nested-KVM harness
//! (`tests/tests/nested_vmm`). It runs inside the L1 VM, next to `rmachine-vmm`, and talks to
//! the L2 guest's agent through the VMM's hybrid vsock unix socket (`CONNECT <port>\n`, then
//! the hello line of `rmachine_protocol::hello`):
//!
//! 1. pings the agent on the control service, retrying until the deadline;
//! 2. sends `GET /version` through the engine service until the engine answers with
//!    `"Version":"26.`;
//! 3. with `--share-dir DIR`: runs a shell in the guest through the exec service that reads
//!    `DIR/hello.txt` (written by L1 into the folder its virtiofsd shares) and writes
//!    `DIR/from-l2.txt` (which L1 checks after the guest is gone);
//! 4. asks the agent to shut the guest down.
//!
//! Every result is one line on stdout starting with `NESTED `, with the time since the client
//! started (the L1 init starts the VMM right before it); the last line is `NESTED CLIENT OK`
//! or `NESTED CLIENT FAIL <reason>`, and the exit status says the same.
//!
//! Usage: `rmachine-nested-client --uds PATH [--timeout-s N] [--vmm-pid PID] [--share-dir DIR]`
#![forbid(unsafe_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rmachine_protocol::control::{self, Reply, Request};
use rmachine_protocol::exec::{ExecRequest, GuestFrame, HostFrame};
use rmachine_protocol::{hello, Service};

/// The engine version the guest image ships (Debian trixie's docker.io 26).
const ENGINE_VERSION_PREFIX: &str = "\"Version\":\"26.";
/// How long one attempt may wait for an answer.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(20);
/// What L1 writes into the shared folder, and what the guest must read back.
const SHARE_HELLO: &str = "hello from L1\n";
/// What the guest writes into the shared folder (`from-l2.txt`), checked by L1.
const SHARE_REPLY: &str = "written by L2\n";
/// Pause between attempts.
const RETRY_PAUSE: Duration = Duration::from_millis(500);

#[derive(Debug, PartialEq, Eq)]
struct Args {
    uds: PathBuf,
    timeout: Duration,
    vmm_pid: Option<u32>,
    share_dir: Option<String>,
}

fn parse_args(args: &[String]) -> Result<Args, String> {
    let mut uds = None;
    let mut timeout = Duration::from_secs(600);
    let mut vmm_pid = None;
    let mut share_dir = None;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{arg} needs a value"))
        };
        match arg.as_str() {
            "--uds" => uds = Some(PathBuf::from(value()?)),
            "--timeout-s" => {
                let v = value()?;
                timeout = Duration::from_secs(
                    v.parse()
                        .map_err(|_| format!("--timeout-s: {v:?} is not a number"))?,
                );
            }
            "--vmm-pid" => {
                let v = value()?;
                vmm_pid = Some(
                    v.parse()
                        .map_err(|_| format!("--vmm-pid: {v:?} is not a pid"))?,
                );
            }
            "--share-dir" => share_dir = Some(value()?),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(Args {
        uds: uds.ok_or("--uds PATH is required")?,
        timeout,
        vmm_pid,
        share_dir,
    })
}

/// Connects to guest `service` through the VMM's hybrid vsock socket and does the hello.
fn connect(uds: &Path, service: Service) -> Result<BufReader<UnixStream>, String> {
    let stream = UnixStream::connect(uds).map_err(|e| format!("connect {}: {e}", uds.display()))?;
    stream
        .set_read_timeout(Some(ATTEMPT_TIMEOUT))
        .map_err(|e| format!("set timeout: {e}"))?;
    let mut reader = BufReader::new(stream);
    send(
        &mut reader,
        format!("CONNECT {}\n", service.port()).as_bytes(),
    )?;
    let answer = read_line(&mut reader, "vsock CONNECT answer")?;
    if !answer.starts_with("OK ") {
        return Err(format!("vmm refused port {}: {answer:?}", service.port()));
    }
    send(&mut reader, hello::format_hello(service, None).as_bytes())?;
    let answer = read_line(&mut reader, "hello answer")?;
    hello::parse_answer(answer.as_bytes()).map_err(|e| format!("hello refused: {e}"))?;
    Ok(reader)
}

fn send(reader: &mut BufReader<UnixStream>, bytes: &[u8]) -> Result<(), String> {
    reader
        .get_mut()
        .write_all(bytes)
        .map_err(|e| format!("write: {e}"))
}

fn read_line(reader: &mut BufReader<UnixStream>, what: &str) -> Result<String, String> {
    let mut line = String::new();
    match reader.read_line(&mut line) {
        Ok(0) => Err(format!("connection closed before the {what}")),
        Ok(_) => Ok(line.trim_end().to_string()),
        Err(e) => Err(format!("reading the {what}: {e}")),
    }
}

/// One control request on a fresh connection.
fn call(uds: &Path, id: u64, request: Request) -> Result<Reply, String> {
    let mut reader = connect(uds, Service::Control)?;
    send(&mut reader, control::encode_request(id, request).as_bytes())?;
    let line = read_line(&mut reader, "control reply")?;
    control::parse_reply(line.as_bytes(), id).map_err(|e| e.to_string())
}

/// `GET /version` through the engine service; returns the whole HTTP response.
fn engine_version(uds: &Path) -> Result<Vec<u8>, String> {
    let mut reader = connect(uds, Service::Engine)?;
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
/// stdout, stderr).
fn exec(uds: &Path, argv: &[&str]) -> Result<(i32, String, String), String> {
    let mut reader = connect(uds, Service::Exec)?;
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
            Err(e) => return Err(format!("reading exec frames: {e}")),
        }
    }
}

/// Reads `<dir>/hello.txt` and writes `<dir>/from-l2.txt` in the guest.
fn check_share(uds: &Path, dir: &str) -> Result<(), String> {
    let script = format!(
        "cat {dir}/hello.txt && printf '%s\\n' 'written by L2' > {dir}/from-l2.txt && grep -w virtiofs /proc/mounts"
    );
    let (code, stdout, stderr) = exec(uds, &["sh", "-c", &script])?;
    if code != 0 {
        return Err(format!("share check exited {code}: {stdout:?} {stderr:?}"));
    }
    if !stdout.starts_with(SHARE_HELLO) {
        return Err(format!("the guest read {stdout:?} from {dir}/hello.txt, not {SHARE_HELLO:?}"));
    }
    println!("NESTED share mounted in L2: {}", stdout[SHARE_HELLO.len()..].trim());
    Ok(())
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
}

impl Client {
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
            if let Some(pid) = self.args.vmm_pid {
                if !process_alive(pid) {
                    return Err(format!(
                        "{what}: rmachine-vmm (pid {pid}) exited after {:.3}s (last error: {last})",
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
            std::thread::sleep(RETRY_PAUSE);
        }
    }

    fn run(&self) -> Result<(), String> {
        let uds = self.args.uds.clone();
        let (_, tries) = self.retry("ping", || match call(&uds, 1, Request::Ping {})? {
            Reply::Pong => Ok(()),
            other => Err(format!("ping answered {other:?}")),
        })?;
        println!(
            "NESTED TIMING l2_ping_s={:.3} (attempts {tries})",
            self.elapsed_s()
        );

        let (version, tries) =
            self.retry("engine", || check_version_response(&engine_version(&uds)?))?;
        println!(
            "NESTED TIMING l2_docker_version_s={:.3} (engine {version}, attempts {tries})",
            self.elapsed_s()
        );

        if let Some(dir) = self.args.share_dir.clone() {
            let (_, tries) = self.retry("share", || check_share(&uds, &dir))?;
            println!(
                "NESTED TIMING l2_share_s={:.3} (attempts {tries}; {SHARE_REPLY:?} written)",
                self.elapsed_s()
            );
        }

        match call(&uds, 2, Request::Shutdown { reboot: false })? {
            Reply::ShuttingDown => {
                println!("NESTED shutdown requested at {:.3}s", self.elapsed_s());
                Ok(())
            }
            other => Err(format!("shutdown answered {other:?}")),
        }
    }
}

fn main() -> std::process::ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let args = match parse_args(&argv) {
        Ok(a) => a,
        Err(e) => {
            println!("NESTED CLIENT FAIL usage: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let started = Instant::now();
    let client = Client {
        deadline: started + args.timeout,
        args,
        started,
    };
    match client.run() {
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
                uds: "/tmp/v.sock".into(),
                timeout: Duration::from_secs(30),
                vmm_pid: Some(42),
                share_dir: None,
            }
        );
        assert!(parse_args(&strings(&["--timeout-s", "1"])).is_err());
        assert!(parse_args(&strings(&["--uds"])).is_err());
        assert!(parse_args(&strings(&["--uds", "x", "--bogus"])).is_err());
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
        assert_eq!(call(&path, 7, Request::Ping {}).unwrap(), Reply::Pong);
        server.join().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
