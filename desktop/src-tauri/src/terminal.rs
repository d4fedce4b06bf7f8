//! Interactive terminals: a shell in a container (the Engine API's exec with a TTY, its
//! start hijacked into a raw byte stream, resized through `/exec/{id}/resize`) or in a
//! machine's guest (the agent's exec service, through the same library function as
//! `rmachine shell`). Each session is a task; the UI sends keys and sizes and hears the
//! output, then the exit status or the reason the session failed, on the session's sink.
//!
//! Ctrl-C is a byte like any other: the terminal in the container or guest turns it into
//! SIGINT for the foreground job, as a local terminal does.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use bollard::exec::CreateExecOptions;
use bollard::query_parameters::ResizeExecOptions;
use bollard::Docker;
use rmachine_machine::exec::{self as guest_exec, ExecInput, ExecOutput};
use rmachine_machine::guest_link::Carrier;
use rmachine_protocol::exec::{ExecRequest, GuestFrame};
use serde::Serialize;
use tauri::async_runtime::JoinHandle;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::error::{CommandError, CommandResult, ErrorKind};
use crate::live::{ActiveCount, Sink};

/// What a terminal session tells the UI, in order: output, then one `exit` or `error`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TerminalEvent {
    /// Output (UTF-8; a character split between reads is held until it is whole).
    Output { data: String },
    /// The command ended with this status.
    Exit { code: i64 },
    /// The session ended without an exit status; the message says why.
    Error { message: String },
}

/// A terminal's size in character cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
pub struct Size {
    pub rows: u16,
    pub cols: u16,
}

enum Input {
    Data(Vec<u8>),
    Resize(Size),
}

/// The UI's identifier of a session.
pub type SessionId = u64;

/// The `TERM` the shells get: what xterm.js emulates.
const TERM: &str = "xterm-256color";
/// The largest head of an upgraded exec start the engine may send, in bytes.
const MAX_HEAD: usize = 16 * 1024;
/// How long the engine may take to report a finished exec's status.
const EXIT_STATUS_WAIT: Duration = Duration::from_secs(3);

struct Session {
    input: mpsc::Sender<Input>,
    task: JoinHandle<()>,
}

/// The open terminal sessions.
#[derive(Default)]
pub struct Terminals {
    sessions: Mutex<HashMap<SessionId, Session>>,
    next: AtomicU64,
    /// Sessions whose connection is open (a task's guard counts, until it drops).
    active: ActiveCount,
}

impl Terminals {
    pub fn new() -> Terminals {
        Terminals::default()
    }

    /// Sessions whose connection to an engine or agent is still open.
    pub fn active(&self) -> usize {
        self.active.get()
    }

    fn add(&self, input: mpsc::Sender<Input>, task: JoinHandle<()>) -> SessionId {
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        if let Ok(mut s) = self.sessions.lock() {
            s.retain(|_, s| !s.task.inner().is_finished());
            s.insert(id, Session { input, task });
        }
        id
    }

    /// A shell in container `container` of the engine at `socket`: `sh` (bash when the
    /// image has it) on a TTY of `size`.
    pub async fn open_container(
        &self,
        docker: Docker,
        socket: &Path,
        container: &str,
        size: Size,
        sink: Sink<TerminalEvent>,
    ) -> CommandResult<SessionId> {
        let exec = docker
            .create_exec(
                container,
                CreateExecOptions {
                    attach_stdin: Some(true),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    tty: Some(true),
                    env: Some(vec![format!("TERM={TERM}")]),
                    cmd: Some(
                        [
                            "/bin/sh",
                            "-c",
                            "command -v bash >/dev/null 2>&1 && exec bash || exec sh",
                        ]
                        .map(String::from)
                        .to_vec(),
                    ),
                    ..Default::default()
                },
            )
            .await?;
        let (stream, early) = start_exec_raw(socket, &exec.id).await?;
        // Before the shell prints its prompt (a resize of a finished exec fails: ignored).
        let _ = docker
            .resize_exec(
                &exec.id,
                ResizeExecOptions {
                    h: i32::from(size.rows),
                    w: i32::from(size.cols),
                },
            )
            .await;
        let (tx, rx) = mpsc::channel(64);
        let guard = self.active.guard();
        let task = tauri::async_runtime::spawn(async move {
            let _guard = guard;
            run_container(docker, exec.id, stream, early, rx, sink).await
        });
        Ok(self.add(tx, task))
    }

    /// A root login shell in the guest of a running machine, as `rmachine shell` opens.
    pub async fn open_machine(
        &self,
        carrier: &Carrier,
        size: Size,
        sink: Sink<TerminalEvent>,
    ) -> CommandResult<SessionId> {
        let request = ExecRequest {
            argv: Vec::new(),
            tty: true,
            rows: size.rows,
            cols: size.cols,
            env: BTreeMap::from([("TERM".to_string(), TERM.to_string())]),
            cwd: None,
        };
        let (input, output) = guest_exec::open(carrier, &request)
            .await
            .map_err(|e| CommandError::new(ErrorKind::Machine, error_chain(&e)))?;
        let (tx, rx) = mpsc::channel(64);
        let guard = self.active.guard();
        let task = tauri::async_runtime::spawn(async move {
            let _guard = guard;
            run_machine(input, output, rx, sink).await
        });
        Ok(self.add(tx, task))
    }

    fn sender(&self, session: SessionId) -> CommandResult<mpsc::Sender<Input>> {
        self.sessions
            .lock()
            .ok()
            .and_then(|s| s.get(&session).map(|s| s.input.clone()))
            .ok_or_else(|| {
                CommandError::new(
                    ErrorKind::NotFound,
                    format!("terminal session {session} has ended"),
                )
            })
    }

    /// Keys (or pasted text) for the session.
    pub async fn input(&self, session: SessionId, data: Vec<u8>) -> CommandResult<()> {
        self.sender(session)?
            .send(Input::Data(data))
            .await
            .map_err(|_| ended(session))
    }

    /// The UI's terminal changed size.
    pub async fn resize(&self, session: SessionId, size: Size) -> CommandResult<()> {
        self.sender(session)?
            .send(Input::Resize(size))
            .await
            .map_err(|_| ended(session))
    }

    /// Ends the session (its connection closes; a shell still running gets a hang-up).
    pub fn close(&self, session: SessionId) {
        if let Ok(mut s) = self.sessions.lock() {
            if let Some(s) = s.remove(&session) {
                s.task.abort();
            }
        }
    }
}

impl Drop for Terminals {
    fn drop(&mut self) {
        if let Ok(s) = self.sessions.lock() {
            for s in s.values() {
                s.task.abort();
            }
        }
    }
}

fn ended(session: SessionId) -> CommandError {
    CommandError::new(
        ErrorKind::NotFound,
        format!("terminal session {session} has ended"),
    )
}

fn error_chain(e: &dyn std::error::Error) -> String {
    rmachine_machine::lifecycle::error_chain(e)
}

/// A raw, bidirectional stream.
pub trait RawStream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> RawStream for T {}

/// Starts exec `exec_id` over a connection of its own, upgraded to the raw stream (what
/// `docker exec -it` does): returns the stream and any of its bytes that came with the
/// engine's answer.
pub async fn start_exec_raw(
    socket: &Path,
    exec_id: &str,
) -> CommandResult<(Pin<Box<dyn RawStream>>, Vec<u8>)> {
    let stream = rmachine_machine::sys::local_socket::connect_path(socket)
        .await
        .map_err(|e| {
            CommandError::new(
                ErrorKind::Engine,
                format!("cannot reach the engine at {}: {e}", socket.display()),
            )
        })?;
    upgrade(Box::pin(stream), exec_id).await
}

/// Sends the exec start request on `stream` and reads the engine's answer.
pub async fn upgrade(
    mut stream: Pin<Box<dyn RawStream>>,
    exec_id: &str,
) -> CommandResult<(Pin<Box<dyn RawStream>>, Vec<u8>)> {
    let io = |e: std::io::Error| {
        CommandError::new(ErrorKind::Engine, format!("exec start connection: {e}"))
    };
    let body = r#"{"Detach":false,"Tty":true}"#;
    let request = format!(
        "POST /exec/{exec_id}/start HTTP/1.1\r\nHost: docker\r\nContent-Type: application/json\r\n\
         Connection: Upgrade\r\nUpgrade: tcp\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.map_err(io)?;
    stream.flush().await.map_err(io)?;
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    let end = loop {
        if let Some(i) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if head.len() > MAX_HEAD {
            return Err(CommandError::new(
                ErrorKind::Engine,
                "the engine's answer to exec start is not HTTP (no end of headers in 16 KiB)",
            ));
        }
        let n = stream.read(&mut buf).await.map_err(io)?;
        if n == 0 {
            return Err(CommandError::new(
                ErrorKind::Engine,
                "the engine closed the connection before answering exec start",
            ));
        }
        head.extend_from_slice(&buf[..n]);
    };
    let early = head.split_off(end);
    let text = String::from_utf8_lossy(&head);
    let status = parse_status(&text).ok_or_else(|| {
        CommandError::new(
            ErrorKind::Engine,
            format!(
                "the engine's answer to exec start is not HTTP: {:?}",
                text.lines()
                    .next()
                    .unwrap_or("")
                    .chars()
                    .take(80)
                    .collect::<String>()
            ),
        )
    })?;
    match status {
        // Upgraded, or (older engines) the raw stream after a plain OK.
        101 | 200 => Ok((stream, early)),
        code => {
            let message = String::from_utf8_lossy(&early).trim().to_string();
            let message = serde_json::from_str::<serde_json::Value>(&message)
                .ok()
                .and_then(|v| v["message"].as_str().map(str::to_string))
                .unwrap_or(message);
            Err(CommandError::new(
                match code {
                    404 => ErrorKind::NotFound,
                    409 => ErrorKind::Busy,
                    _ => ErrorKind::Engine,
                },
                format!("the engine refused exec start ({code}): {message}"),
            ))
        }
    }
}

/// The status code of an HTTP/1.x status line.
fn parse_status(head: &str) -> Option<u16> {
    let line = head.lines().next()?;
    let mut parts = line.split_whitespace();
    let version = parts.next()?;
    if !version.starts_with("HTTP/1.") {
        return None;
    }
    parts.next()?.parse().ok()
}

/// Turns bytes into text across reads: a character split between two reads is held
/// until the rest comes; bytes that are not UTF-8 become U+FFFD.
#[derive(Debug, Default)]
pub struct Utf8Stream {
    pending: Vec<u8>,
}

impl Utf8Stream {
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        let mut rest: &[u8] = &self.pending;
        loop {
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    out.push_str(s);
                    rest = &[];
                    break;
                }
                Err(e) => {
                    let (good, bad) = rest.split_at(e.valid_up_to());
                    // Checked by from_utf8 just above.
                    out.push_str(std::str::from_utf8(good).unwrap_or_default());
                    match e.error_len() {
                        Some(n) => {
                            out.push('\u{fffd}');
                            rest = &bad[n..];
                        }
                        // An incomplete character at the end: wait for the rest.
                        None => {
                            rest = bad;
                            break;
                        }
                    }
                }
            }
        }
        self.pending = rest.to_vec();
        out
    }
}

/// Relays a container exec session until it ends, then reports its exit status.
async fn run_container(
    docker: Docker,
    exec_id: String,
    mut stream: Pin<Box<dyn RawStream>>,
    early: Vec<u8>,
    mut input: mpsc::Receiver<Input>,
    sink: Sink<TerminalEvent>,
) {
    let mut text = Utf8Stream::default();
    let emit = |data: String| {
        if !data.is_empty() {
            sink(TerminalEvent::Output { data });
        }
    };
    emit(text.push(&early));
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        tokio::select! {
            n = stream.read(&mut buf) => match n {
                Ok(0) => break,
                Ok(n) => emit(text.push(&buf[..n])),
                Err(e) => {
                    sink(TerminalEvent::Error { message: format!("the terminal's connection failed: {e}") });
                    return;
                }
            },
            cmd = input.recv() => match cmd {
                Some(Input::Data(data)) => {
                    if let Err(e) = async { stream.write_all(&data).await?; stream.flush().await }.await {
                        sink(TerminalEvent::Error { message: format!("cannot send keys to the terminal: {e}") });
                        return;
                    }
                }
                Some(Input::Resize(size)) => {
                    let options = ResizeExecOptions { h: i32::from(size.rows), w: i32::from(size.cols) };
                    if let Err(e) = docker.resize_exec(&exec_id, options).await {
                        tracing::debug!(error = %e, "exec resize failed");
                    }
                }
                // Closed by the UI: dropping the connection hangs the shell up.
                None => return,
            },
        }
    }
    sink(exec_exit(&docker, &exec_id).await);
}

/// The exit status of a finished exec (the engine may take a moment to record it).
async fn exec_exit(docker: &Docker, exec_id: &str) -> TerminalEvent {
    let deadline = tokio::time::Instant::now() + EXIT_STATUS_WAIT;
    loop {
        match docker.inspect_exec(exec_id).await {
            Ok(r) if r.running != Some(true) => {
                return match r.exit_code {
                    Some(code) => TerminalEvent::Exit { code },
                    None => TerminalEvent::Error {
                        message: "the engine reported no exit status".into(),
                    },
                }
            }
            Ok(_) => {}
            Err(e) => {
                return TerminalEvent::Error {
                    message: format!(
                        "the session ended and its status is unknown (the container stopped?): {}",
                        CommandError::from(e).message
                    ),
                }
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return TerminalEvent::Error {
                message: "the session's connection closed but the engine says it still runs".into(),
            };
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Relays a guest shell session (the agent's exec frames) until its exit code.
async fn run_machine(
    mut input: ExecInput,
    mut output: ExecOutput,
    mut keys: mpsc::Receiver<Input>,
    sink: Sink<TerminalEvent>,
) {
    let mut text = Utf8Stream::default();
    let mut refused = None;
    loop {
        tokio::select! {
            frame = output.next() => match frame {
                Ok(Some(GuestFrame::Stdout(d) | GuestFrame::Stderr(d))) => {
                    let data = text.push(&d);
                    if !data.is_empty() {
                        sink(TerminalEvent::Output { data });
                    }
                }
                Ok(Some(GuestFrame::Error(message))) => refused = Some(message),
                Ok(Some(GuestFrame::Exit(code))) => {
                    sink(TerminalEvent::Exit { code: i64::from(code) });
                    return;
                }
                Ok(None) => {
                    sink(TerminalEvent::Error {
                        message: refused.take().unwrap_or_else(|| "the machine closed the shell without an exit status (did it stop?)".into()),
                    });
                    return;
                }
                Err(e) => {
                    sink(TerminalEvent::Error { message: error_chain(&e) });
                    return;
                }
            },
            cmd = keys.recv() => {
                let sent = match cmd {
                    Some(Input::Data(data)) => input.stdin(&data).await,
                    Some(Input::Resize(size)) => input.resize(size.rows, size.cols).await,
                    None => return,
                };
                if let Err(e) = sent {
                    sink(TerminalEvent::Error { message: format!("cannot send keys to the machine: {e}") });
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::duplex;

    #[test]
    fn test_utf8_stream_holds_split_characters() {
        let mut t = Utf8Stream::default();
        let euro = "€".as_bytes();
        assert_eq!(t.push(&[b'a', euro[0]]), "a");
        assert_eq!(t.push(&euro[1..2]), "");
        assert_eq!(t.push(&[euro[2], b'b']), "€b");
        // Not UTF-8 at all: replaced, and the stream goes on.
        assert_eq!(t.push(&[0xff, b'c', 0xc0, b'd']), "\u{fffd}c\u{fffd}d");
    }

    #[test]
    fn test_status_line_parsing() {
        assert_eq!(
            parse_status("HTTP/1.1 101 UPGRADED\r\nConnection: Upgrade\r\n"),
            Some(101)
        );
        assert_eq!(parse_status("HTTP/1.0 404 Not Found\r\n"), Some(404));
        assert_eq!(parse_status("SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(parse_status(""), None);
    }

    /// A fake engine on one end of a pipe that answers exec start with `answer`.
    async fn answered(answer: &'static [u8]) -> CommandResult<(Vec<u8>, Vec<u8>)> {
        let (client, mut server) = duplex(64 * 1024);
        let engine = tokio::spawn(async move {
            let mut req = vec![0u8; 4096];
            let n = server.read(&mut req).await.unwrap();
            server.write_all(answer).await.unwrap();
            // Then echo one read back, raw, as a TTY would.
            let mut buf = [0u8; 64];
            if let Ok(m) = server.read(&mut buf).await {
                let _ = server.write_all(&buf[..m]).await;
            }
            req.truncate(n);
            req
        });
        let (mut stream, early) = upgrade(Box::pin(client), "abc").await?;
        stream.write_all(b"\x03").await.unwrap();
        let mut echoed = [0u8; 1];
        stream.read_exact(&mut echoed).await.unwrap();
        assert_eq!(&echoed, b"\x03", "raw bytes both ways, Ctrl-C included");
        let request = engine.await.unwrap();
        Ok((request, early))
    }

    #[tokio::test]
    async fn test_upgrade_sends_the_start_and_keeps_early_bytes() {
        let (request, early) =
            answered(b"HTTP/1.1 101 UPGRADED\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n/ # ")
                .await
                .unwrap();
        let request = String::from_utf8(request).unwrap();
        assert!(
            request.starts_with("POST /exec/abc/start HTTP/1.1\r\n"),
            "{request}"
        );
        assert!(request.contains("Upgrade: tcp\r\n"));
        assert!(request.ends_with(r#"{"Detach":false,"Tty":true}"#));
        assert_eq!(early, b"/ # ");
    }

    #[tokio::test]
    async fn test_upgrade_refusals_and_garbage_are_errors() {
        let (client, mut server) = duplex(1024);
        tokio::spawn(async move {
            let mut b = [0u8; 1024];
            let _ = server.read(&mut b).await;
            let _ = server
                .write_all(b"HTTP/1.1 409 Conflict\r\nContent-Type: application/json\r\n\r\n{\"message\":\"container abc is not running\"}")
                .await;
        });
        let e = upgrade(Box::pin(client), "abc").await.err().unwrap();
        assert_eq!(e.kind, ErrorKind::Busy);
        assert!(e.message.contains("container abc is not running"), "{e}");

        let (client, mut server) = duplex(1024);
        tokio::spawn(async move {
            let mut b = [0u8; 1024];
            let _ = server.read(&mut b).await;
            let _ = server.write_all(b"\x00\x01garbage\r\n\r\n").await;
        });
        let e = upgrade(Box::pin(client), "abc").await.err().unwrap();
        assert!(e.message.contains("not HTTP"), "{e}");

        // Endless garbage without an end of headers: an error, not a hang.
        let (client, mut server) = duplex(64 * 1024);
        tokio::spawn(async move {
            let mut b = [0u8; 1024];
            let _ = server.read(&mut b).await;
            let junk = vec![b'x'; 4096];
            while server.write_all(&junk).await.is_ok() {}
        });
        let e = upgrade(Box::pin(client), "abc").await.err().unwrap();
        assert!(e.message.contains("no end of headers"), "{e}");

        // Closed before answering.
        let (client, server) = duplex(1024);
        drop(server);
        let e = upgrade(Box::pin(client), "abc").await.err().unwrap();
        assert_eq!(e.kind, ErrorKind::Engine, "{e}");
    }
}
