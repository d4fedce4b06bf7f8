//! Logging: `tracing` lines to the console (PID 1's stderr is the serial console) and,
//! once the data disk is mounted, to `/var/log/rmachine-agent.log` as well. Lines logged
//! before the file is attached are kept in memory (up to a limit) and written to the
//! file first, so the file holds the whole boot.
//!
//! Each line is stamped with the time since the kernel booted (CLOCK_BOOTTIME), like
//! the kernel's own console lines, so boot steps can be timed across both. The level
//! comes from `RUST_LOG` (default `info`); the kernel passes `RUST_LOG=debug` from its
//! command line to init's environment.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use nix::time::{clock_gettime, ClockId};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::FormatTime;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

/// Most bytes of early log kept for the log file.
const EARLY_MAX: usize = 256 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    #[error("cannot open log file {path}")]
    Open {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot write log file {path}")]
    Write {
        path: String,
        #[source]
        source: io::Error,
    },
}

struct SinkState {
    console: bool,
    file: Option<File>,
    /// Lines waiting for the file; `None` once a file was attached.
    early: Option<Vec<u8>>,
}

/// Where log lines go. Clones share the destinations.
#[derive(Clone)]
pub struct LogSink {
    state: Arc<Mutex<SinkState>>,
}

impl LogSink {
    /// A sink that writes to stderr; with `keep_early`, also keeps lines for a log file
    /// attached later.
    pub fn new(console: bool, keep_early: bool) -> LogSink {
        let early = keep_early.then(Vec::new);
        LogSink {
            state: Arc::new(Mutex::new(SinkState {
                console,
                file: None,
                early,
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, SinkState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// From now on, also appends to this file, after the lines kept so far.
    pub fn attach_file(&self, path: &Path) -> Result<(), LoggingError> {
        let display = path.display().to_string();
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|source| LoggingError::Open {
                path: display.clone(),
                source,
            })?;
        let mut state = self.lock();
        if let Some(early) = state.early.take() {
            file.write_all(&early)
                .map_err(|source| LoggingError::Write {
                    path: display,
                    source,
                })?;
        }
        state.file = Some(file);
        Ok(())
    }

    /// Closes the log file (before its filesystem is unmounted).
    pub fn detach_file(&self) {
        let mut state = self.lock();
        if let Some(file) = state.file.take() {
            let _ = file.sync_all();
        }
    }

    fn write_line(&self, buf: &[u8]) {
        let mut state = self.lock();
        if state.console {
            // Nowhere to report a console that fails.
            let _ = io::stderr().write_all(buf);
        }
        if let Some(file) = state.file.as_mut() {
            let _ = file.write_all(buf);
        } else if let Some(early) = state.early.as_mut() {
            if early.len() + buf.len() <= EARLY_MAX {
                early.extend_from_slice(buf);
            }
        }
    }
}

/// One event's writer.
pub struct SinkWriter(LogSink);

impl Write for SinkWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write_line(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for LogSink {
    type Writer = SinkWriter;

    fn make_writer(&'a self) -> SinkWriter {
        SinkWriter(self.clone())
    }
}

/// Timestamps as seconds since boot: `[    1.234567]`.
struct BootTime;

impl FormatTime for BootTime {
    fn format_time(&self, w: &mut Writer<'_>) -> std::fmt::Result {
        match clock_gettime(ClockId::CLOCK_BOOTTIME) {
            Ok(t) => write!(w, "[{:>5}.{:06}]", t.tv_sec(), t.tv_nsec() / 1000),
            Err(_) => write!(w, "[    ?.??????]"),
        }
    }
}

/// An error and its sources on one line, for log fields and error replies.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Installs the global subscriber writing to `sink`. A second call does nothing.
pub fn init(sink: &LogSink) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_timer(BootTime)
        .with_target(false)
        .with_writer(sink.clone())
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_early_lines_reach_the_file_when_attached() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.log");
        let sink = LogSink::new(false, true);
        sink.make_writer().write_all(b"first\n").unwrap();
        sink.attach_file(&path).unwrap();
        sink.make_writer().write_all(b"second\n").unwrap();
        sink.detach_file();
        sink.make_writer().write_all(b"after detach\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "first\nsecond\n");
    }

    #[test]
    fn test_early_buffer_is_bounded() {
        let sink = LogSink::new(false, true);
        let line = vec![b'x'; 1000];
        for _ in 0..(EARLY_MAX / 1000 + 10) {
            sink.make_writer().write_all(&line).unwrap();
        }
        let kept = sink.lock().early.as_ref().map(Vec::len).unwrap();
        assert!(kept <= EARLY_MAX && kept > EARLY_MAX - 1000, "{kept}");
    }
}
