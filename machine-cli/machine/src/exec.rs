//! A client of the agent's exec service: run a command in the guest with or without a
//! terminal (see [`rmachine_protocol::exec`] for the wire format). The CLI's `shell`
//! and `cp` use it; anything interactive (a terminal in the GUI) can too.

use std::io;

use rmachine_protocol::exec::{ExecRequest, FrameError, GuestFrame, HostFrame, ReadFrameError};
use rmachine_protocol::Service;
use tokio::io::{AsyncWriteExt, ReadHalf, WriteHalf};

use crate::guest_link::{Carrier, GuestStream, LinkError};

/// Why an exec session failed.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error("i/o on the exec connection")]
    Io(#[from] io::Error),
    #[error("agent sent a bad exec frame")]
    Frame(#[source] FrameError),
    #[error("agent closed the exec session without an exit code")]
    NoExit,
    #[error("agent refused the command: {0}")]
    Refused(String),
}

impl From<ReadFrameError> for ExecError {
    fn from(e: ReadFrameError) -> ExecError {
        match e {
            ReadFrameError::Io(e) => ExecError::Io(e),
            ReadFrameError::Frame(e) => ExecError::Frame(e),
        }
    }
}

/// The sending half of a session: stdin, resizes, signals.
pub struct ExecInput {
    writer: WriteHalf<GuestStream>,
}

/// The receiving half of a session: output, then the exit code.
pub struct ExecOutput {
    reader: ReadHalf<GuestStream>,
}

/// Connects to the exec service and sends the request.
pub async fn open(
    carrier: &Carrier,
    request: &ExecRequest,
) -> Result<(ExecInput, ExecOutput), ExecError> {
    let mut stream = carrier.connect(Service::Exec).await?;
    stream.write_all(request.encode().as_bytes()).await?;
    stream.flush().await?;
    let (reader, writer) = tokio::io::split(stream);
    Ok((ExecInput { writer }, ExecOutput { reader }))
}

impl ExecInput {
    async fn send(&mut self, frame: HostFrame) -> io::Result<()> {
        self.writer.write_all(&frame.encode()).await?;
        self.writer.flush().await
    }

    /// Bytes for the command's stdin (split into frames as needed).
    pub async fn stdin(&mut self, data: &[u8]) -> io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        self.send(HostFrame::Stdin(data.to_vec())).await
    }

    /// End of the command's stdin (no effect on a terminal).
    pub async fn close_stdin(&mut self) -> io::Result<()> {
        self.send(HostFrame::Stdin(Vec::new())).await
    }

    /// The terminal's new size.
    pub async fn resize(&mut self, rows: u16, cols: u16) -> io::Result<()> {
        self.send(HostFrame::Resize { rows, cols }).await
    }

    /// Delivers a signal to the command (its foreground job on a terminal).
    pub async fn signal(&mut self, signal: u8) -> io::Result<()> {
        self.send(HostFrame::Signal(signal)).await
    }
}

impl ExecOutput {
    /// The next frame; `Ok(None)` when the agent closed the connection.
    pub async fn next(&mut self) -> Result<Option<GuestFrame>, ExecError> {
        Ok(GuestFrame::read(&mut self.reader).await?)
    }
}

/// What a command run to completion printed, and its exit code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutcome {
    pub code: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl ExecOutcome {
    /// Stderr as text, trimmed, for error messages.
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).trim().to_string()
    }
}

/// Runs a command without a terminal, with `stdin` as its input, and collects its output.
/// A command the agent could not start is [`ExecError::Refused`].
pub async fn run(carrier: &Carrier, argv: &[&str], stdin: &[u8]) -> Result<ExecOutcome, ExecError> {
    let request = ExecRequest {
        argv: argv.iter().map(|a| a.to_string()).collect(),
        ..ExecRequest::default()
    };
    let (mut input, mut output) = open(carrier, &request).await?;
    // Small inputs only (probes): the agent reads stdin while the command runs, so this
    // cannot block for long.
    input.stdin(stdin).await?;
    input.close_stdin().await?;
    let (mut out, mut err) = (Vec::new(), Vec::new());
    loop {
        match output.next().await? {
            Some(GuestFrame::Stdout(d)) => out.extend(d),
            Some(GuestFrame::Stderr(d)) => err.extend(d),
            Some(GuestFrame::Exit(code)) => {
                return Ok(ExecOutcome {
                    code,
                    stdout: out,
                    stderr: err,
                })
            }
            Some(GuestFrame::Error(message)) => return Err(ExecError::Refused(message)),
            None => return Err(ExecError::NoExit),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use rmachine_protocol::hello;
    use rmachine_protocol::line::{read_line_limited, Line, MAX_HEADER_LINE};
    use tokio::io::{AsyncReadExt, BufReader};
    use tokio::net::TcpListener;

    use super::*;

    /// A one-connection fake exec service: echoes stdin to stdout in upper case, the
    /// header's argv to stderr, and exits 9 at stdin EOF.
    async fn fake_exec() -> Carrier {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            let mut s = BufReader::new(s);
            let Line::Data(h) = read_line_limited(&mut s, MAX_HEADER_LINE).await.unwrap() else {
                panic!("no hello")
            };
            assert_eq!(hello::parse_hello(&h).unwrap().service, Service::Exec);
            s.get_mut()
                .write_all(hello::format_ok().as_bytes())
                .await
                .unwrap();
            let Line::Data(header) = read_line_limited(&mut s, 65536).await.unwrap() else {
                panic!("no header")
            };
            let request = ExecRequest::parse(&header).unwrap();
            let mut out = GuestFrame::Stderr(request.argv.join(" ").into_bytes()).encode();
            loop {
                match HostFrame::read(&mut s).await.unwrap() {
                    Some(HostFrame::Stdin(d)) if d.is_empty() => break,
                    Some(HostFrame::Stdin(d)) => {
                        out.extend(GuestFrame::Stdout(d.to_ascii_uppercase()).encode())
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
            out.extend(GuestFrame::Exit(9).encode());
            s.get_mut().write_all(&out).await.unwrap();
            let mut rest = Vec::new();
            let _ = s.read_to_end(&mut rest).await;
        });
        Carrier::Tcp {
            ports: BTreeMap::from([(Service::Exec.port(), addr)]),
            token: "t".into(),
        }
    }

    #[tokio::test]
    async fn test_run_collects_output_and_the_exit_code() {
        let carrier = fake_exec().await;
        let outcome = run(&carrier, &["tar", "-x"], b"hello").await.unwrap();
        assert_eq!(
            outcome,
            ExecOutcome {
                code: 9,
                stdout: b"HELLO".to_vec(),
                stderr: b"tar -x".to_vec()
            }
        );
        assert_eq!(outcome.stderr_text(), "tar -x");
    }

    #[tokio::test]
    async fn test_missing_forward_is_a_link_error() {
        let carrier = Carrier::Tcp {
            ports: BTreeMap::new(),
            token: "t".into(),
        };
        let err = run(&carrier, &["true"], b"").await.unwrap_err();
        assert!(
            matches!(err, ExecError::Link(LinkError::NoForward(1026))),
            "{err}"
        );
    }
}
