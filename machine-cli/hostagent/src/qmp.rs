//! A client of QEMU's machine protocol (QMP) on the machine's `qmp-events.sock`: commands
//! (`query-status`, `cont`) and the events QEMU sends on its own (`BLOCK_IO_ERROR`,
//! `STOP`, `RESUME`). One JSON object per line each way; a command's answer is a
//! `return` or an `error` object, in the order the commands were sent, with events
//! interleaved.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};

/// How long a command may take to be answered.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest line read from QEMU: its answers and events are small.
const MAX_LINE: usize = 1 << 20;

/// An event QEMU sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum QmpEvent {
    /// A disk request failed on the host: `nospace` when the host filesystem is full;
    /// `action` is what QEMU did (`stop`: the VM is paused and the request is retried
    /// when it continues; `report`: the guest got the error).
    BlockIoError {
        device: String,
        operation: String,
        action: String,
        nospace: bool,
        reason: String,
    },
    /// The VM was paused.
    Stop,
    /// The VM runs again.
    Resume,
    /// The connection ended (QEMU exited).
    Closed,
}

type Pending = Arc<Mutex<VecDeque<oneshot::Sender<Result<Value, String>>>>>;

/// A connected, negotiated QMP session.
pub(crate) struct Qmp {
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    pending: Pending,
}

impl Qmp {
    /// Connects to `socket`, reads QEMU's greeting and leaves negotiation mode. Events
    /// arrive on the returned receiver until the connection ends ([`QmpEvent::Closed`]).
    pub(crate) async fn connect(
        socket: &Path,
    ) -> anyhow::Result<(Qmp, mpsc::UnboundedReceiver<QmpEvent>)> {
        let stream = UnixStream::connect(socket)
            .await
            .with_context(|| format!("cannot connect to QEMU's QMP socket {}", socket.display()))?;
        let (read, write) = stream.into_split();
        let mut lines = BufReader::new(read);
        let greeting = tokio::time::timeout(COMMAND_TIMEOUT, read_object(&mut lines))
            .await
            .map_err(|_| anyhow!("QEMU sent no QMP greeting within {COMMAND_TIMEOUT:?}"))??;
        if greeting.get("QMP").is_none() {
            bail!("not a QMP greeting: {greeting}");
        }
        let pending: Pending = Arc::default();
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        tokio::spawn(read_loop(lines, pending.clone(), events_tx));
        let qmp = Qmp {
            writer: tokio::sync::Mutex::new(write),
            pending,
        };
        qmp.execute("qmp_capabilities").await?;
        Ok((qmp, events_rx))
    }

    /// Runs `command` (without arguments); its `return` value.
    pub(crate) async fn execute(&self, command: &str) -> anyhow::Result<Value> {
        let (tx, rx) = oneshot::channel();
        {
            // The answer's slot is queued under the writer's lock, so slots and commands
            // are in the same order.
            let mut writer = self.writer.lock().await;
            self.pending
                .lock()
                .expect("QMP pending lock is never poisoned: no panics while held")
                .push_back(tx);
            let mut line = json!({ "execute": command }).to_string();
            line.push('\n');
            writer
                .write_all(line.as_bytes())
                .await
                .with_context(|| format!("cannot send QMP command {command}"))?;
        }
        match tokio::time::timeout(COMMAND_TIMEOUT, rx).await {
            Err(_) => bail!("QEMU did not answer {command} within {COMMAND_TIMEOUT:?}"),
            Ok(Err(_)) => bail!("QEMU's QMP connection ended before it answered {command}"),
            Ok(Ok(Err(e))) => bail!("QEMU refused {command}: {e}"),
            Ok(Ok(Ok(value))) => Ok(value),
        }
    }

    /// QEMU's run state (`running`, `paused`, `io-error`, …).
    pub(crate) async fn status(&self) -> anyhow::Result<String> {
        let value = self.execute("query-status").await?;
        value
            .get("status")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| anyhow!("query-status answered {value}"))
    }
}

async fn read_object(
    lines: &mut BufReader<tokio::net::unix::OwnedReadHalf>,
) -> anyhow::Result<Value> {
    let mut line = String::new();
    loop {
        line.clear();
        let n = (&mut *lines)
            .take(MAX_LINE as u64)
            .read_line(&mut line)
            .await
            .context("cannot read from QEMU's QMP socket")?;
        if n == 0 {
            bail!("QEMU closed its QMP socket");
        }
        if !line.trim().is_empty() {
            return serde_json::from_str(line.trim())
                .with_context(|| format!("QEMU sent a line that is not JSON: {line:?}"));
        }
    }
}

async fn read_loop(
    mut lines: BufReader<tokio::net::unix::OwnedReadHalf>,
    pending: Pending,
    events: mpsc::UnboundedSender<QmpEvent>,
) {
    loop {
        let object = match read_object(&mut lines).await {
            Ok(object) => object,
            Err(e) => {
                tracing::debug!(error = %format!("{e:#}"), "QMP connection ended");
                break;
            }
        };
        if let Some(event) = object.get("event").and_then(Value::as_str) {
            if let Some(event) = parse_event(event, object.get("data")) {
                let _ = events.send(event);
            }
            continue;
        }
        let answer = match (object.get("return"), object.get("error")) {
            (Some(value), _) => Ok(value.clone()),
            (None, Some(error)) => Err(error
                .get("desc")
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| error.to_string())),
            (None, None) => {
                tracing::debug!(%object, "QMP line ignored");
                continue;
            }
        };
        let slot = pending
            .lock()
            .expect("QMP pending lock is never poisoned: no panics while held")
            .pop_front();
        if let Some(slot) = slot {
            let _ = slot.send(answer);
        }
    }
    pending
        .lock()
        .expect("QMP pending lock is never poisoned: no panics while held")
        .clear();
    let _ = events.send(QmpEvent::Closed);
}

/// The events the host agent acts on; others are `None`.
fn parse_event(name: &str, data: Option<&Value>) -> Option<QmpEvent> {
    let text = |key: &str| {
        data.and_then(|d| d.get(key))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    match name {
        "BLOCK_IO_ERROR" => Some(QmpEvent::BlockIoError {
            device: text("device"),
            operation: text("operation"),
            action: text("action"),
            nospace: data
                .and_then(|d| d.get("nospace"))
                .and_then(Value::as_bool)
                .unwrap_or(false),
            reason: text("reason"),
        }),
        "STOP" => Some(QmpEvent::Stop),
        "RESUME" => Some(QmpEvent::Resume),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::UnixListener;

    #[test]
    fn test_block_io_error_event_is_parsed() {
        let data = json!({"device": "data", "node-name": "#block312", "operation": "write",
            "action": "stop", "nospace": true, "reason": "No space left on device"});
        assert_eq!(
            parse_event("BLOCK_IO_ERROR", Some(&data)),
            Some(QmpEvent::BlockIoError {
                device: "data".into(),
                operation: "write".into(),
                action: "stop".into(),
                nospace: true,
                reason: "No space left on device".into(),
            })
        );
        assert_eq!(parse_event("RESUME", None), Some(QmpEvent::Resume));
        assert_eq!(parse_event("RTC_CHANGE", Some(&json!({}))), None);
    }

    /// A fake QEMU: greets, answers commands in order with an event between them, and
    /// refuses an unknown command.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn test_commands_answers_and_events_through_a_fake_qemu() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let (read, mut write) = stream.into_split();
            let mut lines = BufReader::new(read).lines();
            write
                .write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\r\n")
                .await
                .unwrap();
            while let Some(line) = lines.next_line().await.unwrap() {
                let request: Value = serde_json::from_str(&line).unwrap();
                let reply = match request["execute"].as_str().unwrap() {
                    "qmp_capabilities" => "{\"return\": {}}\r\n".to_string(),
                    "query-status" => concat!(
                        "{\"timestamp\": {}, \"event\": \"BLOCK_IO_ERROR\", \"data\": ",
                        "{\"device\": \"data\", \"operation\": \"write\", \"action\": \"stop\", ",
                        "\"nospace\": true, \"reason\": \"No space left on device\"}}\r\n",
                        "{\"return\": {\"status\": \"io-error\", \"running\": false}}\r\n"
                    )
                    .to_string(),
                    _ => "{\"error\": {\"class\": \"CommandNotFound\", \"desc\": \"no such command\"}}\r\n".to_string(),
                };
                write.write_all(reply.as_bytes()).await.unwrap();
            }
        });
        let (qmp, mut events) = Qmp::connect(&path).await.unwrap();
        assert_eq!(qmp.status().await.unwrap(), "io-error");
        match events.recv().await.unwrap() {
            QmpEvent::BlockIoError { nospace, .. } => assert!(nospace),
            other => panic!("{other:?}"),
        }
        let err = qmp.execute("frobnicate").await.unwrap_err().to_string();
        assert!(err.contains("no such command"), "{err}");
        drop(qmp);
        assert_eq!(events.recv().await, Some(QmpEvent::Closed));
        server.await.unwrap();
        assert!(Qmp::connect(&dir.path().join("missing.sock"))
            .await
            .is_err());
    }
}
