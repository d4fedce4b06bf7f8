//! A container's log for its view: the engine's lines, each with the timestamp the engine
//! gave it (the view shows or hides them; search and filtering happen in the view),
//! followed until the view closes; and the whole log written to a file.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use bollard::container::LogOutput;
use bollard::query_parameters::LogsOptionsBuilder;
use bollard::Docker;
use futures_util::StreamExt;
use serde::Serialize;
use tokio::io::AsyncWriteExt;

use crate::error::{CommandError, CommandResult, ErrorKind};
use crate::live::Sink;

/// How long lines are gathered before they are sent, in milliseconds.
const LOG_BATCH_MS: u64 = 100;
/// The most lines sent at once.
const LOG_BATCH_LINES: usize = 2000;

/// Which of the container's outputs a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Stdout,
    Stderr,
    /// A container with a TTY has one output.
    Tty,
}

/// One line of a container's log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LogLine {
    /// The engine's timestamp (RFC 3339, nanoseconds), empty if it gave none.
    pub ts: String,
    pub text: String,
    pub source: Source,
}

/// What a log stream tells its view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LogEvent {
    Lines {
        lines: Vec<LogLine>,
    },
    /// The stream ended: the container stopped (its log is complete), or the engine failed.
    Ended {
        message: String,
    },
}

/// Splits `TIMESTAMP text` (what the engine writes with `timestamps=1`) into its parts;
/// a line without a leading RFC 3339 timestamp is all text.
pub fn split_timestamp(line: &str) -> (&str, &str) {
    let (head, rest) = line.split_once(' ').unwrap_or((line, ""));
    let b = head.as_bytes();
    let looks_like = b.len() >= 20
        && b[..4].iter().all(u8::is_ascii_digit)
        && b[4] == b'-'
        && b[10] == b'T'
        && (head.ends_with('Z') || b[19..].iter().any(|&c| c == b'+' || c == b'-'));
    if looks_like {
        (head, rest)
    } else {
        ("", line)
    }
}

/// Cuts a container's output (arbitrary chunks per source) into lines; a line's end
/// (`\n`, with a `\r` before it dropped) closes it.
#[derive(Debug, Default)]
pub struct LineSplitter {
    partial: HashMap<Source, Vec<u8>>,
}

impl LineSplitter {
    pub fn push(&mut self, source: Source, bytes: &[u8], out: &mut Vec<LogLine>) {
        let buf = self.partial.entry(source).or_default();
        buf.extend_from_slice(bytes);
        let mut start = 0;
        while let Some(i) = buf[start..].iter().position(|&c| c == b'\n') {
            out.push(line_of(source, &buf[start..start + i]));
            start += i + 1;
        }
        buf.drain(..start);
    }

    /// The lines still open (the stream ended without a last newline).
    pub fn finish(&mut self, out: &mut Vec<LogLine>) {
        let mut rest: Vec<(Source, Vec<u8>)> = self.partial.drain().collect();
        rest.sort_by_key(|(s, _)| *s as u8);
        for (source, buf) in rest {
            if !buf.is_empty() {
                out.push(line_of(source, &buf));
            }
        }
    }
}

fn line_of(source: Source, bytes: &[u8]) -> LogLine {
    let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
    let text = String::from_utf8_lossy(bytes);
    let (ts, text) = split_timestamp(&text);
    LogLine {
        ts: ts.to_string(),
        text: text.to_string(),
        source,
    }
}

fn source_of(out: &LogOutput) -> Option<Source> {
    match out {
        LogOutput::StdOut { .. } => Some(Source::Stdout),
        LogOutput::StdErr { .. } => Some(Source::Stderr),
        LogOutput::Console { .. } => Some(Source::Tty),
        LogOutput::StdIn { .. } => None,
    }
}

/// Sends container `id`'s last `tail` lines, then (when `follow`) each new one until the
/// container stops or the stream is closed (run it in [`crate::live::Streams`]).
pub async fn stream_lines(
    docker: Docker,
    id: String,
    tail: u32,
    follow: bool,
    sink: Sink<LogEvent>,
) {
    let options = LogsOptionsBuilder::new()
        .follow(follow)
        .stdout(true)
        .stderr(true)
        .timestamps(true)
        .tail(&tail.to_string())
        .build();
    let mut stream = docker.logs(&id, Some(options));
    let mut splitter = LineSplitter::default();
    let mut lines = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(LOG_BATCH_MS));
    let send = |lines: &mut Vec<LogLine>| {
        while !lines.is_empty() {
            let rest = lines.split_off(lines.len().min(LOG_BATCH_LINES));
            sink(LogEvent::Lines {
                lines: std::mem::replace(lines, rest),
            });
        }
    };
    let message = loop {
        tokio::select! {
            item = stream.next() => match item {
                Some(Ok(out)) => {
                    if let Some(source) = source_of(&out) {
                        splitter.push(source, out.as_ref(), &mut lines);
                    }
                }
                Some(Err(e)) => {
                    break format!(
                        "the log stream failed: {}; open the logs again to retry",
                        CommandError::from(e).message
                    )
                }
                None if follow => {
                    break "the container stopped: its log is complete".to_string()
                }
                None => break String::new(),
            },
            _ = tick.tick() => send(&mut lines),
        }
    };
    splitter.finish(&mut lines);
    send(&mut lines);
    sink(LogEvent::Ended { message });
}

/// Writes container `id`'s whole log to `path` (with each line's timestamp when
/// `timestamps`); returns the number of lines.
pub async fn save(docker: &Docker, id: &str, timestamps: bool, path: &Path) -> CommandResult<u64> {
    let io_err = |e: std::io::Error| {
        CommandError::new(
            ErrorKind::Io,
            format!(
                "cannot write {}: {e}; choose a folder you can write to",
                path.display()
            ),
        )
    };
    let file = tokio::fs::File::create(path).await.map_err(io_err)?;
    let mut file = tokio::io::BufWriter::new(file);
    let options = LogsOptionsBuilder::new()
        .follow(false)
        .stdout(true)
        .stderr(true)
        .timestamps(true)
        .tail("all")
        .build();
    let mut stream = docker.logs(id, Some(options));
    let mut splitter = LineSplitter::default();
    let mut lines = Vec::new();
    let mut count = 0u64;
    let mut more = true;
    while more {
        match stream.next().await {
            Some(out) => {
                let out = out.map_err(CommandError::from)?;
                if let Some(source) = source_of(&out) {
                    splitter.push(source, out.as_ref(), &mut lines);
                }
            }
            None => {
                splitter.finish(&mut lines);
                more = false;
            }
        }
        for l in lines.drain(..) {
            let line = match (timestamps, l.ts.is_empty()) {
                (true, false) => format!("{} {}\n", l.ts, l.text),
                _ => format!("{}\n", l.text),
            };
            file.write_all(line.as_bytes()).await.map_err(io_err)?;
            count += 1;
        }
    }
    file.flush().await.map_err(io_err)?;
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_split_timestamp_takes_only_a_leading_rfc3339_time() {
        assert_eq!(
            split_timestamp("2024-05-01T10:00:00.123456789Z hello world"),
            ("2024-05-01T10:00:00.123456789Z", "hello world")
        );
        assert_eq!(
            split_timestamp("2024-05-01T10:00:00+02:00 x"),
            ("2024-05-01T10:00:00+02:00", "x")
        );
        assert_eq!(
            split_timestamp("2024-05-01T10:00:00.1Z "),
            ("2024-05-01T10:00:00.1Z", "")
        );
        assert_eq!(split_timestamp("hello world"), ("", "hello world"));
        assert_eq!(split_timestamp("2024 is a year"), ("", "2024 is a year"));
        assert_eq!(split_timestamp(""), ("", ""));
        assert_eq!(
            split_timestamp("2024-05-01T10:00:0éé x"),
            ("", "2024-05-01T10:00:0éé x")
        );
    }

    #[test]
    fn test_lines_are_cut_per_source_across_chunks() {
        let mut s = LineSplitter::default();
        let mut out = Vec::new();
        s.push(
            Source::Stdout,
            b"2024-05-01T10:00:00Z one\n2024-05-01T10:00:01Z tw",
            &mut out,
        );
        s.push(Source::Stderr, b"2024-05-01T10:00:02Z err\r\n", &mut out);
        s.push(Source::Stdout, b"o\n2024-05-01T10:00:03Z thr", &mut out);
        assert_eq!(
            out.iter()
                .map(|l| (l.ts.as_str(), l.text.as_str(), l.source))
                .collect::<Vec<_>>(),
            [
                ("2024-05-01T10:00:00Z", "one", Source::Stdout),
                ("2024-05-01T10:00:02Z", "err", Source::Stderr),
                ("2024-05-01T10:00:01Z", "two", Source::Stdout),
            ]
        );
        out.clear();
        s.finish(&mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].text, "thr");
        out.clear();
        s.finish(&mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn test_invalid_utf8_is_kept_lossily() {
        let mut s = LineSplitter::default();
        let mut out = Vec::new();
        s.push(Source::Tty, b"caf\xe9\n", &mut out);
        assert_eq!(out[0].text, "caf\u{fffd}");
        assert_eq!(out[0].ts, "");
    }
}
