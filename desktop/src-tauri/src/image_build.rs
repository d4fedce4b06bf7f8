//! Building an image from a folder: the form checked, the folder sent as the build's
//! context (a tar stream written while it is sent, [`crate::build_context`]) to the
//! engine's `/build`, and the engine's progress passed to the view line by line. The
//! classic builder runs it (the Engine API's default without a BuildKit session), so
//! `RUN --mount` and other BuildKit-only syntax is refused by the engine with its own
//! message. Closing the stream (leaving the view) drops the request, and the engine stops
//! the build.

use std::collections::HashMap;
use std::io::{self, Write};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bollard::query_parameters::BuildImageOptionsBuilder;
use bollard::Docker;
use bytes::Bytes;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::build_context::{self, ContextError, ContextSummary};
use crate::error::{CommandError, CommandResult, ErrorKind};
use crate::live::Sink;
use crate::run_spec::{check_tag, parse_env};

/// The Build form, as the UI sends it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuildForm {
    /// The folder whose files are the build's context.
    pub folder: String,
    /// The Dockerfile's path inside the folder (empty: `Dockerfile`).
    #[serde(default)]
    pub dockerfile: String,
    /// The image's name and tag.
    pub tag: String,
    /// `KEY=VALUE` lines.
    #[serde(default)]
    pub build_args: String,
    /// Build every step again.
    #[serde(default)]
    pub no_cache: bool,
}

/// A checked Build form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildSpec {
    pub folder: PathBuf,
    /// Relative to the folder, `/` separators.
    pub dockerfile: String,
    pub tag: String,
    pub build_args: HashMap<String, String>,
    pub no_cache: bool,
}

fn invalid(message: String) -> CommandError {
    CommandError::new(ErrorKind::Invalid, message)
}

impl BuildForm {
    pub fn parse(&self) -> CommandResult<BuildSpec> {
        let folder = self.folder.trim();
        if folder.is_empty() {
            return Err(invalid(
                "no folder to build: choose the folder that holds the Dockerfile".into(),
            ));
        }
        let folder = PathBuf::from(folder);
        if !folder.is_absolute() {
            return Err(invalid(format!(
                "the folder \"{}\" is not an absolute path: choose it with Browse…, or write it from / on",
                folder.display()
            )));
        }
        if !folder.is_dir() {
            return Err(invalid(format!(
                "the folder {} does not exist (or is not a folder): check the path, or choose it with Browse…",
                folder.display()
            )));
        }
        let dockerfile = match self.dockerfile.trim() {
            "" => "Dockerfile".to_string(),
            d => d.replace('\\', "/"),
        };
        let rel = Path::new(&dockerfile);
        if rel.is_absolute()
            || rel
                .components()
                .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
        {
            return Err(invalid(format!(
                "the Dockerfile \"{dockerfile}\" must be a path inside the folder (no leading / or ..): e.g. Dockerfile or docker/Dockerfile.dev"
            )));
        }
        if !folder.join(rel).is_file() {
            return Err(invalid(format!(
                "there is no file {dockerfile} in {}: check the Dockerfile's name, or choose the folder that holds it",
                folder.display()
            )));
        }
        let tag = self.tag.trim();
        check_tag(tag).map_err(invalid)?;
        let build_args = parse_env(&self.build_args, "build argument")
            .map_err(invalid)?
            .into_iter()
            .collect();
        Ok(BuildSpec {
            folder,
            dockerfile: dockerfile.trim_start_matches("./").to_string(),
            tag: tag.to_string(),
            build_args,
            no_cache: self.no_cache,
        })
    }
}

/// What a build tells its view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum BuildEvent {
    /// Sending the context: how much so far.
    Context { bytes_sent: u64 },
    /// The context was sent in full.
    ContextDone {
        files: u64,
        bytes: u64,
        ignored: u64,
        dockerignore: bool,
    },
    /// Output of the build (one or more lines).
    Output { text: String },
    /// The image was built and tagged.
    Done { image_id: String, tag: String },
    /// The build failed; the message names the cause and what to do.
    Failed { message: String },
}

/// Sends what `tar` writes as body chunks of a request (in the blocking thread that
/// writes it); a closed request (the build stopped) is a broken pipe to the writer.
struct ChunkWriter {
    tx: mpsc::Sender<Result<Bytes, io::Error>>,
    buf: Vec<u8>,
    sent: Arc<AtomicU64>,
}

const CHUNK: usize = 256 << 10;

impl ChunkWriter {
    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
        let n = chunk.len() as u64;
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the build stopped"))?;
        self.sent.fetch_add(n, Ordering::Relaxed);
        Ok(())
    }
}

impl Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}

/// Builds `spec`, telling `sink` how it goes, until it ends or the stream is closed (run
/// it in [`crate::live::Streams`]).
pub async fn build(docker: Docker, spec: BuildSpec, sink: Sink<BuildEvent>) {
    let message = match run(&docker, &spec, &sink).await {
        Ok(image_id) => {
            sink(BuildEvent::Done {
                image_id,
                tag: spec.tag.clone(),
            });
            return;
        }
        Err(message) => message,
    };
    tracing::info!(tag = spec.tag, folder = %spec.folder.display(), error = message, "build failed");
    sink(BuildEvent::Failed { message });
}

async fn run(docker: &Docker, spec: &BuildSpec, sink: &Sink<BuildEvent>) -> Result<String, String> {
    let ignore = build_context::read_ignore(&spec.folder).map_err(|e| e.to_string())?;
    let dockerignore = !ignore.patterns.is_empty();
    let (tx, mut rx) = mpsc::channel::<Result<Bytes, io::Error>>(4);
    let sent = Arc::new(AtomicU64::new(0));
    let writer = ChunkWriter {
        tx: tx.clone(),
        buf: Vec::with_capacity(CHUNK),
        sent: sent.clone(),
    };
    let folder = spec.folder.clone();
    let dockerfile = spec.dockerfile.clone();
    let tar = tauri::async_runtime::spawn_blocking(move || {
        let result = build_context::write_context(&folder, &dockerfile, &ignore, writer);
        if let Err(e) = &result {
            // The request fails with this; the message comes from `result`.
            let _ = tx.blocking_send(Err(io::Error::other(e.to_string())));
        }
        result
    });
    let body = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
    let options = BuildImageOptionsBuilder::new()
        .dockerfile(&spec.dockerfile)
        .t(&spec.tag)
        .buildargs(&spec.build_args)
        .nocache(spec.no_cache)
        .rm(true)
        .forcerm(true)
        .build();
    let mut stream = docker.build_image(options, None, Some(bollard::body_try_stream(body)));
    let mut tar = Some(tar);
    let mut image_id = String::new();
    let mut failure: Option<String> = None;
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(250));
    let mut context_reported = false;
    loop {
        let item = tokio::select! {
            item = stream.next() => item,
            _ = tick.tick(), if !context_reported => {
                sink(BuildEvent::Context { bytes_sent: sent.load(Ordering::Relaxed) });
                continue;
            }
        };
        // The engine answers once it has the whole context.
        if !context_reported {
            context_reported = true;
            if let Some(t) = tar.take() {
                match t.await {
                    Ok(Ok(s)) => report_context(sink, s, dockerignore),
                    // The request ended before the context was sent: the engine's answer
                    // says why.
                    Ok(Err(ContextError::Write(_))) => {}
                    Ok(Err(e)) => return Err(context_failed(e)),
                    Err(e) => return Err(format!("the build context thread failed: {e}")),
                }
            }
        }
        let Some(item) = item else { break };
        match item {
            Ok(info) => {
                if let Some(text) = info.stream.filter(|s| !s.is_empty()) {
                    sink(BuildEvent::Output { text });
                }
                if let Some(status) = info.status {
                    let line = match info.progress {
                        Some(p) => format!("{status} {p}\n"),
                        None => format!("{status}\n"),
                    };
                    sink(BuildEvent::Output { text: line });
                }
                if let Some(id) = info.aux.and_then(|a| a.id) {
                    image_id = id;
                }
                if let Some(e) = info.error.or(info.error_detail.and_then(|d| d.message)) {
                    failure = Some(e);
                }
            }
            Err(e) => {
                failure = Some(CommandError::from(e).message);
                break;
            }
        }
    }
    if let Some(e) = failure {
        return Err(format!(
            "{}; fix what the output above names (the Dockerfile, a build argument, or a missing base image: load or build it first) and build again",
            e.trim()
        ));
    }
    if image_id.is_empty() {
        // An engine that did not say (older ones): the tag names it.
        image_id = docker
            .inspect_image(&spec.tag)
            .await
            .ok()
            .and_then(|i| i.id)
            .unwrap_or_default();
    }
    Ok(image_id)
}

fn report_context(sink: &Sink<BuildEvent>, s: ContextSummary, dockerignore: bool) {
    sink(BuildEvent::ContextDone {
        files: s.files,
        bytes: s.bytes,
        ignored: s.ignored,
        dockerignore,
    });
}

fn context_failed(e: ContextError) -> String {
    format!("the build context was not sent: {e}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(folder: &Path) -> BuildForm {
        BuildForm {
            folder: folder.display().to_string(),
            dockerfile: String::new(),
            tag: "myapp:1".into(),
            build_args: "GREETING=hi\n# comment\n".into(),
            no_cache: false,
        }
    }

    #[test]
    fn test_build_form_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("Dockerfile"), "FROM x\n").unwrap();
        std::fs::create_dir(dir.path().join("docker")).unwrap();
        std::fs::write(dir.path().join("docker/Dev.Dockerfile"), "FROM x\n").unwrap();
        let spec = form(dir.path()).parse().unwrap();
        assert_eq!(spec.dockerfile, "Dockerfile");
        assert_eq!(spec.build_args["GREETING"], "hi");
        let spec = BuildForm {
            dockerfile: "./docker/Dev.Dockerfile".into(),
            ..form(dir.path())
        }
        .parse()
        .unwrap();
        assert_eq!(spec.dockerfile, "docker/Dev.Dockerfile");

        let msg = |f: BuildForm| f.parse().unwrap_err().message;
        assert!(msg(BuildForm {
            tag: "".into(),
            ..form(dir.path())
        })
        .contains("no name"));
        assert!(msg(BuildForm {
            tag: "My App".into(),
            ..form(dir.path())
        })
        .contains("space"));
        assert!(msg(BuildForm {
            folder: "".into(),
            ..form(dir.path())
        })
        .contains("no folder"));
        assert!(msg(BuildForm {
            folder: "rel/dir".into(),
            ..form(dir.path())
        })
        .contains("not an absolute path"));
        let gone = dir.path().join("gone");
        let m = msg(BuildForm {
            folder: gone.display().to_string(),
            ..form(dir.path())
        });
        assert!(m.contains("does not exist") && m.contains("Browse"), "{m}");
        let m = msg(BuildForm {
            dockerfile: "Other".into(),
            ..form(dir.path())
        });
        assert!(m.contains("there is no file Other"), "{m}");
        let m = msg(BuildForm {
            dockerfile: "../Dockerfile".into(),
            ..form(dir.path())
        });
        assert!(m.contains("inside the folder"), "{m}");
        let m = msg(BuildForm {
            build_args: "NOEQUALS".into(),
            ..form(dir.path())
        });
        assert!(m.contains("build argument line 1"), "{m}");
        assert_eq!(
            BuildForm {
                tag: "UPPER".into(),
                ..form(dir.path())
            }
            .parse()
            .unwrap_err()
            .kind,
            ErrorKind::Invalid
        );
    }

    #[test]
    fn test_chunk_writer_sends_whole_stream_and_stops_when_closed() {
        let (tx, mut rx) = mpsc::channel(64);
        let sent = Arc::new(AtomicU64::new(0));
        let mut w = ChunkWriter {
            tx,
            buf: Vec::new(),
            sent: sent.clone(),
        };
        let data = vec![7u8; CHUNK * 2 + 10];
        w.write_all(&data).unwrap();
        w.flush().unwrap();
        drop(w);
        let mut got = Vec::new();
        while let Some(Ok(chunk)) = rx.blocking_recv() {
            got.extend_from_slice(&chunk);
        }
        assert_eq!(got, data);
        assert_eq!(sent.load(Ordering::Relaxed), data.len() as u64);

        let (tx, rx) = mpsc::channel(1);
        drop(rx);
        let mut w = ChunkWriter {
            tx,
            buf: Vec::new(),
            sent,
        };
        let err = w.write_all(&data).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
    }
}
