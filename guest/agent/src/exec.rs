//! The exec service: runs a command for the host (`rmachine shell`, `rmachine cp`) on a
//! new pseudo-terminal or with pipes, and relays its input, output, terminal size,
//! signals and exit code as frames (see [`rmachine_protocol::exec`]).
//!
//! A terminal session runs `setsid --ctty --wait -- ARGV` with the terminal's slave side
//! as stdin, stdout and stderr: util-linux's `setsid` starts a session and makes the
//! terminal its controlling terminal, which std's `Command` cannot do without
//! `pre_exec` (unsafe, forbidden in this crate). The command is not a process group
//! leader when it starts, so `setsid` does not fork: the process the reaper waits for is
//! the command itself. Without a terminal the command gets three pipes and a process
//! group of its own. Either way the command's process group is killed when the host
//! goes away (SIGHUP on a terminal, then SIGKILL if it lingers; SIGKILL otherwise).

use std::io::ErrorKind;
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use rmachine_protocol::exec::{
    signal_exit_code, ExecRequest, GuestFrame, HostFrame, ReadFrameError, EXIT_CANNOT_RUN,
    EXIT_NOT_FOUND, MAX_EXEC_HEADER,
};
use rmachine_protocol::line::{read_line_limited, Line};
use rustix::fs::{Mode, OFlags};
use rustix::pty::OpenptFlags;
use rustix::termios::Winsize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::mpsc;
use tracing::{debug, info};

use crate::reaper::{self, ExitStatus, Process, Reaper, CHILD_PATH};
use crate::server::{Context, Stream, HELLO_TIMEOUT};

/// Terminal size when the host gave none.
const DEFAULT_ROWS: u16 = 24;
const DEFAULT_COLS: u16 = 80;

/// Working directory when the host gave none (`/` if it does not exist).
const DEFAULT_CWD: &str = "/root";

/// How long output is still forwarded after the command exited. Output already written
/// is forwarded at once; this bounds the wait when a background process it started
/// keeps the terminal or a pipe open.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// How long the last frames may take to reach a host that stopped reading.
const FINISH_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a terminal session may linger after SIGHUP before it is killed.
const HANGUP_GRACE: Duration = Duration::from_secs(5);

/// Bytes read from the command's output at a time (one frame at most).
const READ_CHUNK: usize = 32 * 1024;

/// Frames queued between the command's output and the host.
const FRAME_QUEUE: usize = 16;

/// The program that gives a terminal session its controlling terminal (util-linux).
const SETSID: &str = "setsid";

/// Reads the header, starts the command, relays until it exits.
pub async fn serve(stream: &mut Stream, ctx: &Context) -> std::io::Result<()> {
    let header =
        match tokio::time::timeout(HELLO_TIMEOUT, read_line_limited(stream, MAX_EXEC_HEADER)).await
        {
            Ok(Ok(Line::Data(header))) => header,
            Ok(Ok(Line::TooLong { len })) => {
                let message =
                    format!("exec header of {len} bytes exceeds the limit of {MAX_EXEC_HEADER}");
                return send_frames(stream, &[GuestFrame::Error(message)]).await;
            }
            Ok(Ok(Line::Eof)) => return Ok(()),
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                debug!("no exec header within {HELLO_TIMEOUT:?}");
                return Ok(());
            }
        };
    let request = match ExecRequest::parse(&header) {
        Ok(request) => request,
        Err(e) => {
            let message = crate::logging::error_chain(&e);
            return send_frames(stream, &[GuestFrame::Error(message)]).await;
        }
    };
    match start(&ctx.reaper, &request) {
        Ok(session) => session.run(stream).await,
        Err(refusal) => {
            debug!(reason = %refusal.message, "exec refused");
            let frames = [
                GuestFrame::Error(refusal.message),
                GuestFrame::Exit(refusal.exit_code),
            ];
            send_frames(stream, &frames).await
        }
    }
}

async fn send_frames(stream: &mut Stream, frames: &[GuestFrame]) -> std::io::Result<()> {
    let mut bytes = Vec::new();
    for frame in frames {
        frame.encode_into(&mut bytes);
    }
    stream.write_all(&bytes).await?;
    stream.flush().await
}

/// Why a command was not started: the error frame's message and the exit code after it.
#[derive(Debug, PartialEq, Eq)]
struct Refusal {
    message: String,
    exit_code: i32,
}

impl Refusal {
    fn cannot_run(message: String) -> Refusal {
        Refusal {
            message,
            exit_code: EXIT_CANNOT_RUN,
        }
    }
}

/// A started command.
struct Session {
    process: Process,
    program: String,
    io: SessionIo,
}

enum SessionIo {
    Tty(Arc<Pty>),
    Pipes {
        stdin: pipe::Sender,
        stdout: pipe::Receiver,
        stderr: pipe::Receiver,
    },
}

/// The command line to run: the request's, or the guest's login shell.
fn command_line(request: &ExecRequest) -> Vec<String> {
    if !request.argv.is_empty() {
        return request.argv.clone();
    }
    let shell = if Path::new("/bin/bash").exists() {
        "/bin/bash"
    } else {
        "/bin/sh"
    };
    vec![shell.into(), "-l".into()]
}

/// Finds a program as `execvp` would: a name with a slash as it is, else in `path`.
fn find_program(program: &str, path: &str) -> Result<PathBuf, Refusal> {
    let runnable =
        |p: &Path| std::fs::metadata(p).map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    if program.contains('/') {
        return match runnable(Path::new(program)) {
            Ok(true) => Ok(PathBuf::from(program)),
            Ok(false) => Err(Refusal::cannot_run(format!(
                "{program}: not an executable file"
            ))),
            Err(e) if e.kind() == ErrorKind::NotFound => Err(Refusal {
                message: format!("{program}: no such file or directory"),
                exit_code: EXIT_NOT_FOUND,
            }),
            Err(e) => Err(Refusal::cannot_run(format!("{program}: {e}"))),
        };
    }
    path.split(':')
        .filter(|dir| !dir.is_empty())
        .map(|dir| Path::new(dir).join(program))
        .find(|candidate| matches!(runnable(candidate), Ok(true)))
        .ok_or_else(|| Refusal {
            message: format!("{program}: command not found"),
            exit_code: EXIT_NOT_FOUND,
        })
}

/// Starts the command of a request.
fn start(reaper: &Reaper, request: &ExecRequest) -> Result<Session, Refusal> {
    let argv = command_line(request);
    let program = argv[0].clone();
    let path = request.env.get("PATH").map_or(CHILD_PATH, String::as_str);
    find_program(&program, path)?;
    let cwd = match &request.cwd {
        Some(cwd) if Path::new(cwd).is_dir() => PathBuf::from(cwd),
        Some(cwd) => {
            return Err(Refusal::cannot_run(format!(
                "working directory {cwd} does not exist"
            )))
        }
        None if Path::new(DEFAULT_CWD).is_dir() => PathBuf::from(DEFAULT_CWD),
        None => PathBuf::from("/"),
    };
    let failed = |what: &str, e: std::io::Error| Refusal::cannot_run(format!("{what}: {e}"));

    let (mut command, io) = if request.tty {
        let setsid = find_program(SETSID, CHILD_PATH).map_err(|_| {
            Refusal::cannot_run(format!(
                "{SETSID} (util-linux) is missing in the guest: no terminal sessions"
            ))
        })?;
        let rows = nonzero_or(request.rows, DEFAULT_ROWS);
        let cols = nonzero_or(request.cols, DEFAULT_COLS);
        let (pty, slave) =
            Pty::open(rows, cols).map_err(|e| failed("cannot open a terminal", e))?;
        let stdio = || {
            slave
                .try_clone()
                .map(Stdio::from)
                .map_err(|e| failed("cannot share the terminal", e))
        };
        let mut command = reaper::command(&setsid.to_string_lossy());
        command
            .args(["--ctty", "--wait", "--"])
            .args(&argv)
            .env("TERM", "xterm")
            .stdin(stdio()?)
            .stdout(stdio()?)
            .stderr(stdio()?);
        (command, SessionIo::Tty(Arc::new(pty)))
    } else {
        let (stdin_child, stdin) = pipe_pair().map_err(|e| failed("cannot create a pipe", e))?;
        let (stdout, stdout_child) = pipe_pair().map_err(|e| failed("cannot create a pipe", e))?;
        let (stderr, stderr_child) = pipe_pair().map_err(|e| failed("cannot create a pipe", e))?;
        let mut command = reaper::command(&program);
        command
            .args(&argv[1..])
            // Its own process group, so signals and the final kill reach what it starts.
            .process_group(0)
            .stdin(stdin_child)
            .stdout(stdout_child)
            .stderr(stderr_child);
        let io = SessionIo::Pipes {
            stdin: pipe::Sender::from_owned_fd(stdin)
                .map_err(|e| failed("cannot watch a pipe", e))?,
            stdout: pipe::Receiver::from_owned_fd(stdout)
                .map_err(|e| failed("cannot watch a pipe", e))?,
            stderr: pipe::Receiver::from_owned_fd(stderr)
                .map_err(|e| failed("cannot watch a pipe", e))?,
        };
        (command, io)
    };
    command
        .env("USER", "root")
        .env("LOGNAME", "root")
        .envs(&request.env)
        .current_dir(&cwd);
    let process = reaper.spawn(&mut command).map_err(|e| {
        let exit_code = if e.is_not_found() {
            EXIT_NOT_FOUND
        } else {
            EXIT_CANNOT_RUN
        };
        Refusal {
            message: format!("cannot run {program}: {}", crate::logging::error_chain(&e)),
            exit_code,
        }
    })?;
    // The command holds the child's ends (the terminal's slave side, the pipes' other
    // ends): close ours now, or the end of the output would never be seen.
    drop(command);
    debug!(%program, tty = request.tty, pid = process.pid(), "exec started");
    Ok(Session {
        process,
        program,
        io,
    })
}

fn nonzero_or(value: u16, default: u16) -> u16 {
    if value == 0 {
        default
    } else {
        value
    }
}

/// A pipe as (the child's end, the agent's end) for stdin, or (the agent's, the
/// child's) for output: (read end, write end), both close-on-exec.
fn pipe_pair() -> std::io::Result<(OwnedFd, OwnedFd)> {
    Ok(rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?)
}

/// The master side of a pseudo-terminal, non-blocking, watched by the runtime (through
/// two descriptors of it: tokio's pipe ends take any non-blocking descriptor that polls
/// like a pipe, which a terminal master does).
struct Pty {
    reader: pipe::Receiver,
    writer: pipe::Sender,
}

impl Pty {
    /// Opens a terminal of the given size; returns it and its slave side. Both ends are
    /// close-on-exec from the start, so no other child of the agent inherits them.
    fn open(rows: u16, cols: u16) -> std::io::Result<(Pty, OwnedFd)> {
        let master =
            rustix::pty::openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)?;
        rustix::pty::grantpt(&master)?;
        rustix::pty::unlockpt(&master)?;
        let name = rustix::pty::ptsname(&master, Vec::new())?;
        let slave = rustix::fs::open(
            name.as_c_str(),
            OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        rustix::termios::tcsetwinsize(&master, winsize(rows, cols))?;
        // One open file description: the flag holds for both descriptors.
        rustix::fs::fcntl_setfl(&master, OFlags::NONBLOCK)?;
        let reader = pipe::Receiver::from_owned_fd_unchecked(master.try_clone()?)?;
        let writer = pipe::Sender::from_owned_fd_unchecked(master)?;
        Ok((Pty { reader, writer }, slave))
    }

    /// Reads output; 0 once every slave descriptor is closed (Linux reports EIO then).
    async fn read(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            self.reader.readable().await?;
            match self.reader.try_read(buf) {
                Err(e) if e.kind() == ErrorKind::WouldBlock => continue,
                Err(e) if e.raw_os_error() == Some(nix::libc::EIO) => return Ok(0),
                result => return result,
            }
        }
    }

    async fn write_all(&self, mut buf: &[u8]) -> std::io::Result<()> {
        while !buf.is_empty() {
            self.writer.writable().await?;
            match self.writer.try_write(buf) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => buf = &buf[n..],
                Err(e) if e.kind() == ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Sets the window size; the kernel sends SIGWINCH to the foreground process group.
    fn resize(&self, rows: u16, cols: u16) -> std::io::Result<()> {
        Ok(rustix::termios::tcsetwinsize(
            &self.writer,
            winsize(rows, cols),
        )?)
    }

    /// The terminal's foreground process group (a job the shell started, or the shell).
    fn foreground_group(&self) -> Option<Pid> {
        rustix::termios::tcgetpgrp(&self.writer)
            .ok()
            .map(|pid| Pid::from_raw(pid.as_raw_nonzero().get()))
    }
}

fn winsize(rows: u16, cols: u16) -> Winsize {
    Winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

/// Where the command's output comes from.
enum Source {
    Pty(Arc<Pty>),
    Pipe(pipe::Receiver),
}

impl Source {
    async fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Source::Pty(pty) => pty.read(buf).await,
            Source::Pipe(pipe) => pipe.read(buf).await,
        }
    }
}

/// Where the host's input goes.
enum Sink {
    Pty(Arc<Pty>),
    Pipe(Option<pipe::Sender>),
}

impl Sink {
    async fn write(&mut self, data: &[u8]) {
        let result = match self {
            Sink::Pty(pty) => pty.write_all(data).await,
            Sink::Pipe(Some(pipe)) => pipe.write_all(data).await,
            Sink::Pipe(None) => Ok(()),
        };
        // The command may have closed its input or exited: the rest of the input is
        // dropped, as a pipe to a finished reader would.
        if let Err(e) = result {
            debug!(error = %e, "stdin write failed; dropping further input");
            self.close();
        }
    }

    /// End of input. On a terminal there is no such thing: the program reads until it
    /// is told to stop (Ctrl-D is a byte the host sends).
    fn close(&mut self) {
        if let Sink::Pipe(pipe) = self {
            *pipe = None;
        }
    }
}

/// Reads a source until its end, sending its bytes as frames.
async fn pump(
    mut source: Source,
    frame: fn(Vec<u8>) -> GuestFrame,
    frames: mpsc::Sender<GuestFrame>,
) {
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        match source.read(&mut buf).await {
            Ok(0) => return,
            Ok(n) => {
                if frames.send(frame(buf[..n].to_vec())).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                debug!(error = %e, "reading the command's output failed");
                return;
            }
        }
    }
}

/// How the relay ended.
enum End {
    Exited(Result<ExitStatus, reaper::ReaperError>),
    HostGone(String),
}

impl Session {
    async fn run(self, stream: &mut Stream) -> std::io::Result<()> {
        let Session {
            mut process,
            program,
            io,
        } = self;
        let pid = process.pid();
        // The command leads its own process group (setsid or process_group(0)).
        let group = Pid::from_raw(pid as i32);
        let tty = matches!(io, SessionIo::Tty(_));
        let (pty, first, second, mut sink) = match io {
            SessionIo::Tty(pty) => (
                Some(pty.clone()),
                Source::Pty(pty.clone()),
                None,
                Sink::Pty(pty),
            ),
            SessionIo::Pipes {
                stdin,
                stdout,
                stderr,
            } => (
                None,
                Source::Pipe(stdout),
                Some(Source::Pipe(stderr)),
                Sink::Pipe(Some(stdin)),
            ),
        };

        let (mut reader, mut writer) = tokio::io::split(stream);
        let (frames_tx, mut frames_rx) = mpsc::channel::<GuestFrame>(FRAME_QUEUE);
        let exit_tx = frames_tx.clone();
        // Both outputs at once: a command blocked on a full stderr pipe never closes
        // its stdout.
        let mut pumps = Box::pin(async move {
            let stderr_tx = frames_tx.clone();
            tokio::join!(pump(first, GuestFrame::Stdout, frames_tx), async move {
                if let Some(second) = second {
                    pump(second, GuestFrame::Stderr, stderr_tx).await;
                }
            });
        });
        // Writes frames in order until the exit frame is out.
        let mut writes = Box::pin(async move {
            while let Some(frame) = frames_rx.recv().await {
                writer.write_all(&frame.encode()).await?;
                writer.flush().await?;
                if matches!(frame, GuestFrame::Exit(_)) {
                    return Ok(());
                }
            }
            Err(std::io::Error::other(
                "frame queue closed before the exit frame",
            ))
        });
        let mut input = Box::pin(async move {
            loop {
                match HostFrame::read(&mut reader).await {
                    Ok(Some(HostFrame::Stdin(data))) if data.is_empty() => sink.close(),
                    Ok(Some(HostFrame::Stdin(data))) => sink.write(&data).await,
                    Ok(Some(HostFrame::Resize { rows, cols })) => match &pty {
                        Some(pty) => {
                            if let Err(e) = pty.resize(rows, cols) {
                                debug!(error = %e, "cannot resize the terminal");
                            }
                        }
                        None => debug!("resize without a terminal ignored"),
                    },
                    Ok(Some(HostFrame::Signal(number))) => {
                        let target = pty
                            .as_ref()
                            .and_then(|pty| pty.foreground_group())
                            .unwrap_or(group);
                        // Until this future is dropped, the main loop has not seen the
                        // exit, so the group is still ours (its pid is not reused while
                        // the leader is unreaped or just reaped).
                        signal_group(target, number);
                    }
                    Ok(None) => return "the host closed the connection".to_string(),
                    Err(ReadFrameError::Io(e)) => return format!("reading from the host: {e}"),
                    Err(ReadFrameError::Frame(e)) => {
                        return format!("bad frame from the host: {e}")
                    }
                }
            }
        });

        let mut pumps_done = false;
        let end = loop {
            tokio::select! {
                () = &mut pumps, if !pumps_done => pumps_done = true,
                result = &mut writes => {
                    let reason = match result {
                        Ok(()) => "the output ended early".to_string(),
                        Err(e) => format!("writing to the host: {e}"),
                    };
                    break End::HostGone(reason);
                }
                reason = &mut input => break End::HostGone(reason),
                status = process.wait() => break End::Exited(status),
            }
        };
        drop(input);
        let status = match end {
            End::HostGone(reason) => {
                drop((pumps, writes));
                info!(%program, pid, %reason, "host left an exec session; ending the command");
                hang_up(process, group, tty);
                return Ok(());
            }
            End::Exited(status) => status,
        };
        // Forward what the command wrote before it exited.
        if !pumps_done {
            let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
                tokio::select! {
                    () = &mut pumps => true,
                    _ = &mut writes => false,
                }
            })
            .await;
            match drained {
                Ok(true) => {}
                Ok(false) => return Ok(()),
                Err(_) => debug!(%program, pid, "output still open after the exit; not waiting"),
            }
        }
        drop(pumps);
        let mut last = Vec::new();
        let code = match status {
            Ok(ExitStatus::Code(code)) => code,
            Ok(ExitStatus::Signal(signal)) => signal_exit_code(signal as i32),
            Err(e) => {
                last.push(GuestFrame::Error(crate::logging::error_chain(&e)));
                -1
            }
        };
        info!(%program, pid, code, "exec finished");
        last.push(GuestFrame::Exit(code));
        let finish = async {
            let send_all = async {
                for frame in last {
                    exit_tx
                        .send(frame)
                        .await
                        .map_err(|_| std::io::Error::other("frame writer stopped"))?;
                }
                Ok::<(), std::io::Error>(())
            };
            let (sent, written) = tokio::join!(send_all, &mut writes);
            sent.and(written)
        };
        match tokio::time::timeout(FINISH_TIMEOUT, finish).await {
            Ok(result) => result,
            Err(_) => Err(std::io::Error::new(
                ErrorKind::TimedOut,
                "the host did not take the last frames",
            )),
        }
    }
}

fn signal_group(group: Pid, number: u8) {
    match Signal::try_from(i32::from(number)) {
        Ok(signal) => {
            if let Err(e) = killpg(group, signal) {
                debug!(%group, %signal, error = %e, "cannot signal the command");
            }
        }
        // Real-time signals have no nix name; the host's frame was in range, so this is
        // rare enough to only note.
        Err(_) => debug!(number, "signal not supported"),
    }
}

/// Ends a command whose host left: SIGHUP to a terminal session, then SIGKILL if it is
/// still there after a grace period; SIGKILL at once without a terminal. The exit is
/// collected in the background.
fn hang_up(mut process: Process, group: Pid, tty: bool) {
    if process.try_status().is_some() {
        return;
    }
    let first = if tty { Signal::SIGHUP } else { Signal::SIGKILL };
    if let Err(e) = killpg(group, first) {
        debug!(%group, error = %e, "cannot signal the command");
    }
    tokio::spawn(async move {
        if tokio::time::timeout(HANGUP_GRACE, process.wait())
            .await
            .is_err()
        {
            if process.try_status().is_none() {
                let _ = killpg(group, Signal::SIGKILL);
            }
            let _ = process.wait().await;
        }
        debug!(pid = process.pid(), "abandoned command ended");
    });
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use rmachine_protocol::exec::{ExecRequest, GuestFrame, HostFrame};
    use rmachine_protocol::Service;
    use tokio::io::{AsyncWriteExt, BufReader};
    use tokio::net::TcpStream;

    use crate::reaper::tests::CHILDREN;
    use crate::reaper::Reaper;
    use crate::server::tests::{connect, start_server_with, TestServer};

    async fn server() -> (TestServer, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let server = start_server_with(dir.path().join("docker.sock"), Reaper::start()).await;
        (server, dir)
    }

    async fn open(server: &TestServer, request: &ExecRequest) -> BufReader<TcpStream> {
        let mut stream = connect(server, Service::Exec).await;
        stream
            .get_mut()
            .write_all(request.encode().as_bytes())
            .await
            .unwrap();
        stream
    }

    fn run(argv: &[&str]) -> ExecRequest {
        ExecRequest {
            argv: argv.iter().map(|a| a.to_string()).collect(),
            ..ExecRequest::default()
        }
    }

    async fn next(stream: &mut BufReader<TcpStream>) -> Option<GuestFrame> {
        tokio::time::timeout(Duration::from_secs(20), GuestFrame::read(stream))
            .await
            .expect("a frame within 20 s")
            .unwrap()
    }

    /// Every frame up to the end of the stream: stdout, stderr, the other frames.
    async fn collect(stream: &mut BufReader<TcpStream>) -> (String, String, Vec<GuestFrame>) {
        let (mut out, mut err, mut rest) = (Vec::new(), Vec::new(), Vec::new());
        while let Some(frame) = next(stream).await {
            match frame {
                GuestFrame::Stdout(d) => out.extend(d),
                GuestFrame::Stderr(d) => err.extend(d),
                other => rest.push(other),
            }
        }
        (
            String::from_utf8_lossy(&out).into_owned(),
            String::from_utf8_lossy(&err).into_owned(),
            rest,
        )
    }

    /// Waits (up to 20 s) until a process runs with exactly this argv.
    async fn wait_for_process(argv: &[&str]) {
        let want: Vec<u8> = argv
            .iter()
            .flat_map(|a| [a.as_bytes(), b"\0"].concat())
            .collect();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let running = std::fs::read_dir("/proc")
                .unwrap()
                .flatten()
                .any(|entry| std::fs::read(entry.path().join("cmdline")).is_ok_and(|c| c == want));
            if running {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{argv:?} did not start within 20 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn send(stream: &mut BufReader<TcpStream>, frame: HostFrame) {
        stream.get_mut().write_all(&frame.encode()).await.unwrap();
    }

    #[tokio::test]
    async fn test_exec_without_tty_separates_streams_and_reports_the_exit_code() {
        let _guard = CHILDREN.lock().await;
        let (server, _dir) = server().await;
        let mut s = open(
            &server,
            &run(&["/bin/sh", "-c", "echo out; echo err >&2; exit 3"]),
        )
        .await;
        let (out, err, rest) = collect(&mut s).await;
        assert_eq!((out.as_str(), err.as_str()), ("out\n", "err\n"));
        assert_eq!(rest, [GuestFrame::Exit(3)]);
    }

    #[tokio::test]
    async fn test_exec_passes_stdin_env_and_cwd() {
        let _guard = CHILDREN.lock().await;
        let (server, _dir) = server().await;
        let mut request = run(&["sh", "-c", "cat; echo \"$GREETING $HOME $(pwd)\""]);
        request.env.insert("GREETING".into(), "hi".into());
        request.cwd = Some("/tmp".into());
        let mut s = open(&server, &request).await;
        send(&mut s, HostFrame::Stdin(b"line one\n".to_vec())).await;
        send(&mut s, HostFrame::Stdin(b"line two\n".to_vec())).await;
        send(&mut s, HostFrame::Stdin(Vec::new())).await;
        let (out, _, rest) = collect(&mut s).await;
        assert_eq!(out, "line one\nline two\nhi /root /tmp\n");
        assert_eq!(rest, [GuestFrame::Exit(0)]);
    }

    #[tokio::test]
    async fn test_exec_missing_program_is_an_error_and_127() {
        let _guard = CHILDREN.lock().await;
        let (server, _dir) = server().await;
        for argv in [&["/nonexistent/program"][..], &["no-such-command-rmachine"]] {
            let mut s = open(&server, &run(argv)).await;
            let (_, _, rest) = collect(&mut s).await;
            match &rest[..] {
                [GuestFrame::Error(message), GuestFrame::Exit(127)] => {
                    assert!(message.contains(argv[0]), "{message}")
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        let mut request = run(&["true"]);
        request.cwd = Some("/nonexistent/dir".into());
        let mut s = open(&server, &request).await;
        let (_, _, rest) = collect(&mut s).await;
        assert!(
            matches!(&rest[..], [GuestFrame::Error(m), GuestFrame::Exit(126)] if m.contains("/nonexistent/dir")),
            "{rest:?}"
        );
    }

    #[tokio::test]
    async fn test_exec_bad_header_is_an_error_frame() {
        let (server, _dir) = server().await;
        let mut s = connect(&server, Service::Exec).await;
        s.get_mut()
            .write_all(b"{\"argv\":[\"ls\"],\"user\":\"nobody\"}\n")
            .await
            .unwrap();
        let (_, _, rest) = collect(&mut s).await;
        assert!(
            matches!(&rest[..], [GuestFrame::Error(m)] if m.contains("user")),
            "{rest:?}"
        );
    }

    #[tokio::test]
    async fn test_exec_signal_frame_reaches_the_command() {
        let _guard = CHILDREN.lock().await;
        let (server, _dir) = server().await;
        let script = "trap 'echo got TERM; exit 5' TERM; echo ready; while :; do sleep 0.1; done";
        let mut s = open(&server, &run(&["sh", "-c", script])).await;
        assert_eq!(
            next(&mut s).await,
            Some(GuestFrame::Stdout(b"ready\n".to_vec()))
        );
        send(&mut s, HostFrame::Signal(15)).await;
        let (out, _, rest) = collect(&mut s).await;
        assert_eq!(out, "got TERM\n");
        assert_eq!(rest, [GuestFrame::Exit(5)]);
    }

    #[tokio::test]
    async fn test_exec_host_leaving_kills_the_command() {
        let _guard = CHILDREN.lock().await;
        let (server, _dir) = server().await;
        let mut s = open(&server, &run(&["sh", "-c", "echo $$; exec sleep 1000"])).await;
        let Some(GuestFrame::Stdout(pid)) = next(&mut s).await else {
            panic!("no pid")
        };
        let pid = String::from_utf8(pid).unwrap().trim().to_string();
        let proc_dir = std::path::PathBuf::from(format!("/proc/{pid}"));
        assert!(proc_dir.exists());
        drop(s);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        // Killed and reaped: a zombie would keep its /proc entry.
        while proc_dir.exists() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "sleep {pid} outlived its host"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn pty_available() -> bool {
        if std::path::Path::new("/dev/ptmx").exists() {
            return true;
        }
        eprintln!(
            "SKIPPED: /dev/ptmx is unavailable in this environment, so no terminal can be opened"
        );
        false
    }

    #[tokio::test]
    async fn test_exec_with_tty_runs_on_a_terminal_and_follows_resizes() {
        if !pty_available() {
            return;
        }
        let _guard = CHILDREN.lock().await;
        let (server, _dir) = server().await;
        let mut request = run(&[
            "/bin/sh",
            "-c",
            "tty; stty size; echo err >&2; read line; stty size; echo \"got $line\"; exit 4",
        ]);
        request.tty = true;
        request.rows = 40;
        request.cols = 120;
        let mut s = open(&server, &request).await;
        let mut out = String::new();
        while !out.contains("err") {
            match next(&mut s).await {
                Some(GuestFrame::Stdout(d)) => out.push_str(&String::from_utf8_lossy(&d)),
                other => panic!("unexpected {other:?} after {out:?}"),
            }
        }
        send(
            &mut s,
            HostFrame::Resize {
                rows: 50,
                cols: 100,
            },
        )
        .await;
        send(&mut s, HostFrame::Stdin(b"hello\r".to_vec())).await;
        let (rest_out, err, rest) = collect(&mut s).await;
        out.push_str(&rest_out);
        // On a terminal there is no separate stderr, and lines end in CR LF.
        assert_eq!(err, "");
        let lines: Vec<&str> = out.split("\r\n").collect();
        assert!(lines[0].starts_with("/dev/pts/"), "{out:?}");
        assert_eq!(lines[1], "40 120", "{out:?}");
        assert!(lines.contains(&"50 100"), "{out:?}");
        assert!(lines.contains(&"got hello"), "{out:?}");
        assert_eq!(rest, [GuestFrame::Exit(4)]);
    }

    /// Whether this process ignores SIGINT (test runners may start tests that way, and
    /// children inherit it).
    fn sigint_ignored() -> bool {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let ignored = status
            .lines()
            .find_map(|l| l.strip_prefix("SigIgn:"))
            .map(|mask| u64::from_str_radix(mask.trim(), 16).unwrap())
            .unwrap();
        ignored & (1 << (2 - 1)) != 0
    }

    #[tokio::test]
    async fn test_exec_tty_is_the_controlling_terminal() {
        if !pty_available() {
            return;
        }
        let _guard = CHILDREN.lock().await;
        let (server, _dir) = server().await;
        // /dev/tty opens only for a process with a controlling terminal.
        let mut request = run(&[
            "/bin/sh",
            "-c",
            "if exec 3<>/dev/tty; then echo ctty; else echo none; fi",
        ]);
        request.tty = true;
        let mut s = open(&server, &request).await;
        let (out, _, rest) = collect(&mut s).await;
        assert_eq!(out, "ctty\r\n");
        assert_eq!(rest, [GuestFrame::Exit(0)]);

        // Ctrl-C as a byte becomes SIGINT for the foreground job.
        if sigint_ignored() {
            eprintln!("SKIPPED the Ctrl-C half: this test process ignores SIGINT, and so would the command");
            return;
        }
        let mut request = run(&["/bin/sh", "-c", "echo start; sleep 97; echo after"]);
        request.tty = true;
        let mut s = open(&server, &request).await;
        assert_eq!(
            next(&mut s).await,
            Some(GuestFrame::Stdout(b"start\r\n".to_vec()))
        );
        // dash defers a SIGINT that arrives while it starts a command until that command
        // ends: type Ctrl-C once `sleep` runs, as a person at the terminal would.
        wait_for_process(&["sleep", "97"]).await;
        send(&mut s, HostFrame::Stdin(vec![0x03])).await;
        let (out, _, rest) = collect(&mut s).await;
        assert!(!out.contains("after"), "{out:?}");
        assert_eq!(rest, [GuestFrame::Exit(128 + 2)]);
    }
}
