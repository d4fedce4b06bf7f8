//! The exec service: run a command in the guest, with a terminal or with pipes.
//!
//! After the hello, the host sends one JSON header line, an [`ExecRequest`] of at most
//! [`MAX_EXEC_HEADER`] bytes:
//!
//! `{"argv":["/bin/bash","-l"],"tty":true,"rows":40,"cols":120,"env":{"TERM":"xterm-256color"},"cwd":"/root"}`
//!
//! Then both sides exchange frames, `[kind u8][len u32 BE][payload]`, of at most
//! [`MAX_FRAME`] payload bytes:
//!
//! | host → guest ([`HostFrame`]) | guest → host ([`GuestFrame`]) |
//! | --- | --- |
//! | 0 stdin data; an empty payload is stdin EOF | 0 stdout data |
//! | 1 resize: rows u16 BE, cols u16 BE | 1 stderr data (never sent with a terminal) |
//! | 2 signal: the signal number, u8 | 2 exit: i32 BE, the exit code or 128 + signal |
//! | | 3 error: a UTF-8 message |
//!
//! A session the agent accepted ends with exactly one exit frame, after the last output
//! frame; the agent then closes. An error frame says why the command could not be run
//! as asked: after a bad header it is the last frame; when the program could not be
//! started it is followed by an exit frame with 127 (not found) or 126 (not runnable),
//! as shells do. The host keeps its side open until the exit frame: closing it earlier
//! ends the session, and the agent kills the process (SIGHUP with a terminal, SIGKILL
//! without).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Longest exec header line, newline excluded.
pub const MAX_EXEC_HEADER: usize = 64 * 1024;

/// Largest frame payload. Data longer than this is split over several frames.
pub const MAX_FRAME: usize = 1024 * 1024;

/// Bytes before a frame's payload: the kind and the length.
pub const FRAME_HEADER_LEN: usize = 5;

/// Exit code when the program does not exist (as shells report it).
pub const EXIT_NOT_FOUND: i32 = 127;

/// Exit code when the program exists but could not be started.
pub const EXIT_CANNOT_RUN: i32 = 126;

/// What the host asks the agent to run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecRequest {
    /// Program and arguments; the program is looked up in `PATH`. Empty: the guest's
    /// login shell.
    #[serde(default)]
    pub argv: Vec<String>,
    /// Run on a new pseudo-terminal (stdout and stderr merged) instead of pipes.
    #[serde(default)]
    pub tty: bool,
    /// Initial terminal height in rows; 0: the agent's default (24). Ignored without a
    /// terminal.
    #[serde(default)]
    pub rows: u16,
    /// Initial terminal width in columns; 0: the agent's default (80).
    #[serde(default)]
    pub cols: u16,
    /// Variables set over the agent's defaults (`PATH`, `HOME=/root`).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory, absolute; default `/root`.
    #[serde(default)]
    pub cwd: Option<String>,
}

/// Why an exec header was refused.
#[derive(Debug, thiserror::Error)]
pub enum ExecRequestError {
    #[error("exec header is not valid JSON")]
    Json(#[source] serde_json::Error),
    #[error("exec header is invalid: {0}")]
    Invalid(String),
}

impl ExecRequest {
    /// The header line, newline included.
    pub fn encode(&self) -> String {
        // Plain data with string keys: serialization cannot fail.
        let mut line = serde_json::to_string(self).expect("exec requests always serialize");
        line.push('\n');
        line
    }

    /// Parses and checks a header line (without its newline).
    pub fn parse(line: &[u8]) -> Result<ExecRequest, ExecRequestError> {
        let request: ExecRequest = serde_json::from_slice(line).map_err(ExecRequestError::Json)?;
        request.validate()?;
        Ok(request)
    }

    /// Checks what the OS would refuse or misread: NUL bytes, `=` in names, a relative
    /// working directory.
    pub fn validate(&self) -> Result<(), ExecRequestError> {
        let invalid = |m: String| Err(ExecRequestError::Invalid(m));
        if self.argv.first().is_some_and(|p| p.is_empty()) {
            return invalid("the program name is empty".into());
        }
        if self.argv.iter().any(|a| a.contains('\0')) {
            return invalid("an argument contains a NUL byte".into());
        }
        for (name, value) in &self.env {
            if name.is_empty() || name.contains(['=', '\0']) || value.contains('\0') {
                return invalid(format!("bad environment variable {name:?}"));
            }
        }
        if let Some(cwd) = &self.cwd {
            if !cwd.starts_with('/') || cwd.contains('\0') {
                return invalid(format!("working directory {cwd:?} is not an absolute path"));
            }
        }
        Ok(())
    }
}

/// A frame the host sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostFrame {
    /// Bytes for the process's stdin; empty means end of input.
    Stdin(Vec<u8>),
    /// The terminal's new size.
    Resize { rows: u16, cols: u16 },
    /// Deliver this signal (to the terminal's foreground process group, or to the
    /// process group of the command).
    Signal(u8),
}

/// A frame the agent sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestFrame {
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    /// The process ended: its exit code, or 128 + the signal that killed it.
    Exit(i32),
    /// The command could not be run as asked.
    Error(String),
}

/// Why bytes are not a valid frame.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("unknown {direction} frame kind {kind}")]
    UnknownKind { direction: &'static str, kind: u8 },
    #[error("frame of {len} bytes exceeds the limit of {MAX_FRAME}")]
    TooLong { len: usize },
    #[error("{what} frame must carry {want} bytes, not {got}")]
    BadLength {
        what: &'static str,
        want: usize,
        got: usize,
    },
    #[error("signal number {0} is out of range")]
    BadSignal(u8),
    #[error("error frame is not UTF-8")]
    NotUtf8,
}

/// Why a frame could not be read from a stream.
#[derive(Debug, thiserror::Error)]
pub enum ReadFrameError {
    #[error("i/o while reading an exec frame")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Frame(#[from] FrameError),
}

mod kind {
    pub const STDIN: u8 = 0;
    pub const RESIZE: u8 = 1;
    pub const SIGNAL: u8 = 2;

    pub const STDOUT: u8 = 0;
    pub const STDERR: u8 = 1;
    pub const EXIT: u8 = 2;
    pub const ERROR: u8 = 3;
}

/// Highest signal number Linux knows (SIGRTMAX).
const MAX_SIGNAL: u8 = 64;

fn push_frame(out: &mut Vec<u8>, kind: u8, payload: &[u8]) {
    // Every caller keeps payloads within MAX_FRAME, far below u32::MAX.
    let len = u32::try_from(payload.len()).expect("frame payloads are at most MAX_FRAME");
    out.push(kind);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(payload);
}

/// Appends data frames, split at [`MAX_FRAME`]; empty data is one empty frame.
fn push_data(out: &mut Vec<u8>, kind: u8, data: &[u8]) {
    if data.is_empty() {
        push_frame(out, kind, data);
    }
    for chunk in data.chunks(MAX_FRAME) {
        push_frame(out, kind, chunk);
    }
}

/// Reads a frame header from the start of `buf`: the kind and the payload length.
fn parse_header(buf: &[u8]) -> Result<Option<(u8, usize)>, FrameError> {
    let Some(header) = buf.get(..FRAME_HEADER_LEN) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    if len > MAX_FRAME {
        return Err(FrameError::TooLong { len });
    }
    Ok(Some((header[0], len)))
}

/// Decodes one whole frame from the start of `buf` with `from_parts`: the frame and the
/// bytes it took, or `Ok(None)` until the frame is complete.
fn decode_with<T>(
    buf: &[u8],
    from_parts: impl FnOnce(u8, Vec<u8>) -> Result<T, FrameError>,
) -> Result<Option<(T, usize)>, FrameError> {
    let Some((kind, len)) = parse_header(buf)? else {
        return Ok(None);
    };
    let end = FRAME_HEADER_LEN + len;
    match buf.get(FRAME_HEADER_LEN..end) {
        Some(payload) => Ok(Some((from_parts(kind, payload.to_vec())?, end))),
        None => Ok(None),
    }
}

/// Reads one frame's kind and payload; `Ok(None)` when the stream ends between frames.
/// Not cancel safe: a frame read halfway is lost if the future is dropped.
pub async fn read_raw_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
) -> Result<Option<(u8, Vec<u8>)>, ReadFrameError> {
    let mut header = [0u8; FRAME_HEADER_LEN];
    // The first byte separately: end of stream here is a clean end.
    if reader.read(&mut header[..1]).await? == 0 {
        return Ok(None);
    }
    reader.read_exact(&mut header[1..]).await?;
    let (kind, len) = parse_header(&header)?.expect("a whole header was read");
    let mut payload = vec![0u8; len];
    reader.read_exact(&mut payload).await?;
    Ok(Some((kind, payload)))
}

fn exact<const N: usize>(what: &'static str, payload: &[u8]) -> Result<[u8; N], FrameError> {
    payload.try_into().map_err(|_| FrameError::BadLength {
        what,
        want: N,
        got: payload.len(),
    })
}

impl HostFrame {
    /// Appends the frame's bytes (several frames for stdin data over [`MAX_FRAME`]).
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        match self {
            HostFrame::Stdin(data) => push_data(out, kind::STDIN, data),
            HostFrame::Resize { rows, cols } => {
                let mut payload = [0u8; 4];
                payload[..2].copy_from_slice(&rows.to_be_bytes());
                payload[2..].copy_from_slice(&cols.to_be_bytes());
                push_frame(out, kind::RESIZE, &payload);
            }
            HostFrame::Signal(signal) => push_frame(out, kind::SIGNAL, &[*signal]),
        }
    }

    /// The frame's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }

    /// Interprets a frame's kind and payload.
    pub fn from_parts(kind: u8, payload: Vec<u8>) -> Result<HostFrame, FrameError> {
        match kind {
            kind::STDIN => Ok(HostFrame::Stdin(payload)),
            kind::RESIZE => {
                let p = exact::<4>("resize", &payload)?;
                Ok(HostFrame::Resize {
                    rows: u16::from_be_bytes([p[0], p[1]]),
                    cols: u16::from_be_bytes([p[2], p[3]]),
                })
            }
            kind::SIGNAL => match exact::<1>("signal", &payload)?[0] {
                signal @ 1..=MAX_SIGNAL => Ok(HostFrame::Signal(signal)),
                other => Err(FrameError::BadSignal(other)),
            },
            kind => Err(FrameError::UnknownKind {
                direction: "host",
                kind,
            }),
        }
    }

    /// Decodes one frame from the start of `buf`: the frame and the bytes it took, or
    /// `Ok(None)` until `buf` holds a whole frame.
    pub fn decode(buf: &[u8]) -> Result<Option<(HostFrame, usize)>, FrameError> {
        decode_with(buf, HostFrame::from_parts)
    }

    /// Reads one frame; `Ok(None)` when the stream ends between frames.
    pub async fn read<R: AsyncRead + Unpin>(
        reader: &mut R,
    ) -> Result<Option<HostFrame>, ReadFrameError> {
        match read_raw_frame(reader).await? {
            Some((kind, payload)) => Ok(Some(HostFrame::from_parts(kind, payload)?)),
            None => Ok(None),
        }
    }
}

impl GuestFrame {
    /// Appends the frame's bytes (several frames for output over [`MAX_FRAME`]; an error
    /// message over it is cut at a character boundary).
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        match self {
            GuestFrame::Stdout(data) => push_data(out, kind::STDOUT, data),
            GuestFrame::Stderr(data) => push_data(out, kind::STDERR, data),
            GuestFrame::Exit(code) => push_frame(out, kind::EXIT, &code.to_be_bytes()),
            GuestFrame::Error(message) => {
                let mut end = message.len().min(MAX_FRAME);
                while !message.is_char_boundary(end) {
                    end -= 1;
                }
                push_frame(out, kind::ERROR, &message.as_bytes()[..end]);
            }
        }
    }

    /// The frame's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }

    /// Interprets a frame's kind and payload.
    pub fn from_parts(kind: u8, payload: Vec<u8>) -> Result<GuestFrame, FrameError> {
        match kind {
            kind::STDOUT => Ok(GuestFrame::Stdout(payload)),
            kind::STDERR => Ok(GuestFrame::Stderr(payload)),
            kind::EXIT => Ok(GuestFrame::Exit(i32::from_be_bytes(exact::<4>(
                "exit", &payload,
            )?))),
            kind::ERROR => String::from_utf8(payload)
                .map(GuestFrame::Error)
                .map_err(|_| FrameError::NotUtf8),
            kind => Err(FrameError::UnknownKind {
                direction: "guest",
                kind,
            }),
        }
    }

    /// Decodes one frame from the start of `buf`: the frame and the bytes it took, or
    /// `Ok(None)` until `buf` holds a whole frame.
    pub fn decode(buf: &[u8]) -> Result<Option<(GuestFrame, usize)>, FrameError> {
        decode_with(buf, GuestFrame::from_parts)
    }

    /// Reads one frame; `Ok(None)` when the stream ends between frames.
    pub async fn read<R: AsyncRead + Unpin>(
        reader: &mut R,
    ) -> Result<Option<GuestFrame>, ReadFrameError> {
        match read_raw_frame(reader).await? {
            Some((kind, payload)) => Ok(Some(GuestFrame::from_parts(kind, payload)?)),
            None => Ok(None),
        }
    }
}

/// The exit frame's code for a process killed by `signal`.
pub fn signal_exit_code(signal: i32) -> i32 {
    128 + signal
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_request_round_trip_and_defaults() {
        let request = ExecRequest {
            argv: vec!["/bin/bash".into(), "-l".into()],
            tty: true,
            rows: 40,
            cols: 120,
            env: BTreeMap::from([("TERM".into(), "xterm-256color".into())]),
            cwd: Some("/root".into()),
        };
        let line = request.encode();
        assert!(line.ends_with('\n') && !line.trim_end().contains('\n'));
        assert_eq!(
            ExecRequest::parse(line.trim_end().as_bytes()).unwrap(),
            request
        );
        let minimal = ExecRequest::parse(br#"{"argv":["uname","-a"]}"#).unwrap();
        assert_eq!(
            minimal,
            ExecRequest {
                argv: vec!["uname".into(), "-a".into()],
                ..ExecRequest::default()
            }
        );
        assert_eq!(ExecRequest::parse(b"{}").unwrap(), ExecRequest::default());
    }

    #[test]
    fn test_request_rejects_bad_headers() {
        for bad in [
            &br#"{"argv":["ls"],"user":"root"}"#[..],
            br#"not json"#,
            br#"{"argv":"ls"}"#,
            br#"{"rows":70000}"#,
        ] {
            assert!(
                matches!(ExecRequest::parse(bad), Err(ExecRequestError::Json(_))),
                "{bad:?}"
            );
        }
        for bad in [
            &br#"{"argv":[""]}"#[..],
            br#"{"argv":["a\u0000b"]}"#,
            br#"{"env":{"A=B":"c"}}"#,
            br#"{"env":{"":"c"}}"#,
            br#"{"cwd":"relative/dir"}"#,
        ] {
            assert!(
                matches!(ExecRequest::parse(bad), Err(ExecRequestError::Invalid(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn test_host_frames_round_trip() {
        let frames = [
            HostFrame::Stdin(b"ls -l\n".to_vec()),
            HostFrame::Stdin(Vec::new()),
            HostFrame::Resize {
                rows: 40,
                cols: 300,
            },
            HostFrame::Signal(2),
        ];
        let mut wire = Vec::new();
        for f in &frames {
            f.encode_into(&mut wire);
        }
        assert_eq!(&wire[..5], &[0, 0, 0, 0, 6]);
        let mut rest = &wire[..];
        for f in &frames {
            let (decoded, used) = HostFrame::decode(rest).unwrap().unwrap();
            assert_eq!(&decoded, f);
            rest = &rest[used..];
        }
        assert!(rest.is_empty());
        assert_eq!(
            HostFrame::Resize { rows: 1, cols: 2 }.encode(),
            [1, 0, 0, 0, 4, 0, 1, 0, 2]
        );
    }

    #[test]
    fn test_guest_frames_round_trip() {
        let frames = [
            GuestFrame::Stdout(b"out".to_vec()),
            GuestFrame::Stderr(b"err".to_vec()),
            GuestFrame::Error("nosuch: command not found".into()),
            GuestFrame::Exit(-1),
            GuestFrame::Exit(signal_exit_code(9)),
        ];
        for f in frames {
            let wire = f.encode();
            assert_eq!(GuestFrame::decode(&wire).unwrap(), Some((f, wire.len())));
        }
        assert_eq!(GuestFrame::Exit(3).encode(), [2, 0, 0, 0, 4, 0, 0, 0, 3]);
    }

    #[test]
    fn test_partial_frames_wait_for_more_bytes() {
        let wire = GuestFrame::Stdout(b"hello".to_vec()).encode();
        for cut in 0..wire.len() {
            assert_eq!(
                GuestFrame::decode(&wire[..cut]).unwrap(),
                None,
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn test_bad_frames_are_errors() {
        assert_eq!(
            HostFrame::decode(&[9, 0, 0, 0, 0]),
            Err(FrameError::UnknownKind {
                direction: "host",
                kind: 9
            })
        );
        assert_eq!(
            GuestFrame::decode(&[4, 0, 0, 0, 0]),
            Err(FrameError::UnknownKind {
                direction: "guest",
                kind: 4
            })
        );
        assert_eq!(
            HostFrame::decode(&[1, 0, 0, 0, 3, 0, 1, 0]),
            Err(FrameError::BadLength {
                what: "resize",
                want: 4,
                got: 3
            })
        );
        assert_eq!(
            HostFrame::decode(&[2, 0, 0, 0, 1, 0]),
            Err(FrameError::BadSignal(0))
        );
        assert_eq!(
            HostFrame::decode(&[2, 0, 0, 0, 1, 65]),
            Err(FrameError::BadSignal(65))
        );
        assert_eq!(
            GuestFrame::decode(&[2, 0, 0, 0, 2, 0, 7]),
            Err(FrameError::BadLength {
                what: "exit",
                want: 4,
                got: 2
            })
        );
        assert_eq!(
            GuestFrame::decode(&[3, 0, 0, 0, 2, 0xff, 0xfe]),
            Err(FrameError::NotUtf8)
        );
    }

    #[test]
    fn test_oversized_frames_are_refused_before_their_payload() {
        let len = (MAX_FRAME as u32 + 1).to_be_bytes();
        let header = [0, len[0], len[1], len[2], len[3]];
        // Only the header: the length alone condemns it.
        assert_eq!(
            HostFrame::decode(&header),
            Err(FrameError::TooLong { len: MAX_FRAME + 1 })
        );
        assert_eq!(
            GuestFrame::decode(&header),
            Err(FrameError::TooLong { len: MAX_FRAME + 1 })
        );
    }

    #[test]
    fn test_large_data_is_split_and_long_errors_are_cut() {
        let data = vec![7u8; MAX_FRAME * 2 + 10];
        let wire = GuestFrame::Stdout(data.clone()).encode();
        let mut rest = &wire[..];
        let mut joined = Vec::new();
        let mut count = 0;
        while !rest.is_empty() {
            let (GuestFrame::Stdout(chunk), used) = GuestFrame::decode(rest).unwrap().unwrap()
            else {
                panic!("not stdout")
            };
            assert!(chunk.len() <= MAX_FRAME);
            joined.extend(chunk);
            rest = &rest[used..];
            count += 1;
        }
        assert_eq!((count, joined), (3, data));
        let long = "é".repeat(MAX_FRAME);
        let (GuestFrame::Error(cut), _) = GuestFrame::decode(&GuestFrame::Error(long).encode())
            .unwrap()
            .unwrap()
        else {
            panic!("not an error")
        };
        assert!(cut.len() <= MAX_FRAME && cut.len() >= MAX_FRAME - 1);
    }

    #[tokio::test]
    async fn test_async_read_of_frames() {
        let mut wire = HostFrame::Stdin(b"abc".to_vec()).encode();
        wire.extend(HostFrame::Signal(15).encode());
        let mut reader = &wire[..];
        assert_eq!(
            HostFrame::read(&mut reader).await.unwrap(),
            Some(HostFrame::Stdin(b"abc".to_vec()))
        );
        assert_eq!(
            HostFrame::read(&mut reader).await.unwrap(),
            Some(HostFrame::Signal(15))
        );
        assert_eq!(HostFrame::read(&mut reader).await.unwrap(), None);
        // A stream that ends inside a frame is an error, not a clean end.
        let wire = GuestFrame::Stdout(b"abc".to_vec()).encode();
        let mut reader = &wire[..6];
        assert!(matches!(
            GuestFrame::read(&mut reader).await,
            Err(ReadFrameError::Io(_))
        ));
        let mut reader = &[7u8, 0, 0, 0, 0][..];
        assert!(matches!(
            GuestFrame::read(&mut reader).await,
            Err(ReadFrameError::Frame(_))
        ));
    }
}
