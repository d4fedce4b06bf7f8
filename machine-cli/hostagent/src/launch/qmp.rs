//! A small client of QEMU's QMP socket (one JSON object per line): the commands a save
//! and a resume need.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use rmachine_protocol::line::{read_line_limited, Line};
use serde_json::{json, Value};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;

/// The longest QMP line read (replies here are small; events too).
const MAX_LINE: usize = 1 << 20;
/// How long one command may take to answer (a migration runs in the background).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

pub(crate) struct Qmp {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

impl Qmp {
    /// Connects to QEMU's QMP socket at `path` (waiting up to `timeout` for QEMU to
    /// create it) and leaves the greeting's negotiation mode.
    pub(crate) async fn connect(path: &Path, timeout: Duration) -> anyhow::Result<Qmp> {
        let started = Instant::now();
        let stream = loop {
            match UnixStream::connect(path).await {
                Ok(s) => break s,
                Err(e) if started.elapsed() < timeout => {
                    tracing::trace!(error = %e, "QMP socket not ready");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!("cannot connect to QEMU's QMP socket {}", path.display())
                    })
                }
            }
        };
        let (read, writer) = stream.into_split();
        let mut qmp = Qmp {
            reader: BufReader::new(read),
            writer,
        };
        let greeting = tokio::time::timeout(COMMAND_TIMEOUT, qmp.read_value())
            .await
            .map_err(|_| anyhow!("QEMU sent no QMP greeting within {COMMAND_TIMEOUT:?}"))??;
        if greeting.get("QMP").is_none() {
            bail!("QEMU's QMP socket greeted with {greeting}");
        }
        qmp.execute("qmp_capabilities", None).await?;
        Ok(qmp)
    }

    async fn read_value(&mut self) -> anyhow::Result<Value> {
        match read_line_limited(&mut self.reader, MAX_LINE).await? {
            Line::Data(bytes) => serde_json::from_slice(&bytes).with_context(|| {
                format!(
                    "QEMU sent a bad QMP line: {:?}",
                    String::from_utf8_lossy(&bytes)
                )
            }),
            Line::Eof => bail!("QEMU closed its QMP socket"),
            Line::TooLong { .. } => bail!("QEMU sent a QMP line longer than {MAX_LINE} bytes"),
        }
    }

    /// Runs `command`; its `return` value, or QEMU's error as the error.
    pub(crate) async fn execute(
        &mut self,
        command: &str,
        arguments: Option<Value>,
    ) -> anyhow::Result<Value> {
        let mut request = json!({ "execute": command });
        if let Some(arguments) = arguments {
            request["arguments"] = arguments;
        }
        let mut line = request.to_string();
        line.push('\n');
        let exchange = async {
            self.writer.write_all(line.as_bytes()).await?;
            loop {
                let reply = self.read_value().await?;
                if let Some(event) = reply.get("event") {
                    tracing::debug!(%event, "QMP event");
                    continue;
                }
                if let Some(value) = reply.get("return") {
                    return Ok(value.clone());
                }
                if let Some(error) = reply.get("error") {
                    bail!(
                        "{}",
                        error
                            .get("desc")
                            .and_then(Value::as_str)
                            .unwrap_or("an error without a description")
                    );
                }
                bail!("QEMU answered {reply}");
            }
        };
        tokio::time::timeout(COMMAND_TIMEOUT, exchange)
            .await
            .map_err(|_| anyhow!("QEMU did not answer {command} within {COMMAND_TIMEOUT:?}"))?
            .with_context(|| format!("QMP {command}"))
    }

    /// QEMU's version with its package ("7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)").
    pub(crate) async fn version(&mut self) -> anyhow::Result<String> {
        let v = self.execute("query-version", None).await?;
        Ok(version_text(&v))
    }

    /// Why QEMU cannot migrate this VM now (non-migratable devices), if anything.
    pub(crate) async fn blocked_reasons(&mut self) -> anyhow::Result<Vec<String>> {
        let v = self.execute("query-migrate", None).await?;
        Ok(v.get("blocked-reasons")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|r| r.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Waits until the migration (a save or a load) has completed, for up to `timeout`.
    pub(crate) async fn wait_migration(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let started = Instant::now();
        loop {
            let v = self.execute("query-migrate", None).await?;
            match v.get("status").and_then(Value::as_str).unwrap_or("") {
                "completed" => return Ok(()),
                "failed" | "cancelled" => bail!(
                    "{}",
                    v.get("error-desc")
                        .and_then(Value::as_str)
                        .unwrap_or("QEMU gives no reason")
                ),
                _ => {}
            }
            if started.elapsed() > timeout {
                bail!("not done within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn version_text(v: &Value) -> String {
    let q = &v["qemu"];
    let n = |k: &str| q.get(k).and_then(Value::as_u64).unwrap_or(0);
    let package = v
        .get("package")
        .and_then(Value::as_str)
        .unwrap_or("")
        .trim();
    let mut text = format!("{}.{}.{}", n("major"), n("minor"), n("micro"));
    if !package.is_empty() {
        text.push_str(&format!(" ({package})"));
    }
    text
}

/// `path` as one word of a `sh -c` command (QEMU's `exec:` migration runs one).
pub(crate) fn shell_quote(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncBufReadExt;

    #[test]
    fn test_version_and_quoting() {
        let v = json!({"qemu": {"major": 7, "minor": 2, "micro": 22}, "package": "Debian 1:7.2+dfsg-7"});
        assert_eq!(version_text(&v), "7.2.22 (Debian 1:7.2+dfsg-7)");
        assert_eq!(
            version_text(&json!({"qemu": {"major": 8, "minor": 2, "micro": 0}, "package": ""})),
            "8.2.0"
        );
        assert_eq!(shell_quote(Path::new("/m/it's here")), r"'/m/it'\''s here'");
    }

    /// A fake QEMU: greets, then answers each command from `answers` (after an event).
    async fn fake_qemu(answers: Vec<Value>) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            let (r, mut w) = s.into_split();
            let mut lines = BufReader::new(r).lines();
            w.write_all(b"{\"QMP\": {\"version\": {}}}\n")
                .await
                .unwrap();
            let _caps = lines.next_line().await.unwrap();
            w.write_all(b"{\"return\": {}}\n").await.unwrap();
            for answer in answers {
                let _ = lines.next_line().await.unwrap();
                w.write_all(b"{\"event\": \"STOP\"}\n").await.unwrap();
                w.write_all(format!("{answer}\n").as_bytes()).await.unwrap();
            }
        });
        (dir, path)
    }

    #[tokio::test]
    async fn test_commands_skip_events_and_report_errors() {
        let (_d, path) = fake_qemu(vec![
            json!({"return": {"blocked-reasons": ["non-migratable device: vhost-user-fs"]}}),
            json!({"return": {"status": "active"}}),
            json!({"return": {"status": "failed", "error-desc": "disk full"}}),
            json!({"error": {"class": "GenericError", "desc": "no such thing"}}),
        ])
        .await;
        let mut qmp = Qmp::connect(&path, Duration::from_secs(5)).await.unwrap();
        assert_eq!(
            qmp.blocked_reasons().await.unwrap(),
            ["non-migratable device: vhost-user-fs"]
        );
        let err = qmp
            .wait_migration(Duration::from_secs(5))
            .await
            .unwrap_err();
        assert_eq!(err.to_string(), "disk full");
        let err = qmp.execute("nope", None).await.unwrap_err();
        assert!(format!("{err:#}").contains("no such thing"), "{err:#}");
        // QEMU gone: an error (a closed socket or a broken pipe), never a hang.
        let err = qmp.execute("gone", None).await.unwrap_err();
        assert!(format!("{err:#}").starts_with("QMP gone: "), "{err:#}");
    }
}
