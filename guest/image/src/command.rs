//! Running the external build tools: output goes to a log file, each line may feed the
//! progress display, and a failure carries the last lines of output.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use crate::ImageError;

const TAIL_LINES: usize = 25;

/// Runs `cmd`, appending its stdout and stderr to `log`, calling `on_line` for each
/// line of output. Fails with the command, its status and the last lines it printed.
pub(crate) fn run(
    cmd: &mut Command,
    log: &Path,
    on_line: &mut dyn FnMut(&str),
) -> Result<(), ImageError> {
    let shown = format!("{cmd:?}").replace('"', "");
    let mut log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(ImageError::io("cannot open build log", log))?;
    let _ = writeln!(log_file, "$ {shown}");
    // stderr is merged into stdout through a shell-free pipe: spawn with both piped and
    // read stderr on a thread.
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| ImageError::Spawn {
            command: shown.clone(),
            source,
        })?;
    let stderr = child.stderr.take().expect("stderr was piped");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let tx2 = tx.clone();
    let err_thread = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx2.send(line).is_err() {
                break;
            }
        }
    });
    let stdout = child.stdout.take().expect("stdout was piped");
    let out_thread = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut tail = VecDeque::with_capacity(TAIL_LINES);
    for line in rx {
        let _ = writeln!(log_file, "{line}");
        on_line(&line);
        if tail.len() == TAIL_LINES {
            tail.pop_front();
        }
        tail.push_back(line);
    }
    let _ = out_thread.join();
    let _ = err_thread.join();
    let status = child.wait().map_err(|source| ImageError::Spawn {
        command: shown.clone(),
        source,
    })?;
    if status.success() {
        Ok(())
    } else {
        Err(ImageError::CommandFailed {
            command: shown,
            status: status.to_string(),
            tail: tail.into_iter().collect::<Vec<_>>().join("\n"),
        })
    }
}

/// Runs `cmd` and returns its stdout; failures as in [`run`].
pub(crate) fn output(cmd: &mut Command) -> Result<String, ImageError> {
    let shown = format!("{cmd:?}").replace('"', "");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|source| ImageError::Spawn {
            command: shown.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(ImageError::CommandFailed {
            command: shown,
            status: out.status.to_string(),
            tail: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_run_logs_lines_and_reports_failure_tail() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("build.log");
        let mut seen = Vec::new();
        run(
            Command::new("sh").args(["-c", "echo one; echo two >&2"]),
            &log,
            &mut |l| seen.push(l.to_string()),
        )
        .unwrap();
        seen.sort();
        assert_eq!(seen, ["one", "two"]);
        let err = run(
            Command::new("sh").args(["-c", "echo boom; exit 3"]),
            &log,
            &mut |_| {},
        )
        .unwrap_err();
        match err {
            ImageError::CommandFailed { status, tail, .. } => {
                assert!(status.contains('3'), "{status}");
                assert!(tail.contains("boom"), "{tail}");
            }
            other => panic!("unexpected {other:?}"),
        }
        let logged = std::fs::read_to_string(&log).unwrap();
        assert!(
            logged.contains("boom") && logged.contains("one"),
            "{logged}"
        );
    }

    #[test]
    fn test_missing_program_is_a_spawn_error() {
        let err = output(&mut Command::new("/nonexistent/tool")).unwrap_err();
        assert!(matches!(err, ImageError::Spawn { .. }), "{err:?}");
    }
}
