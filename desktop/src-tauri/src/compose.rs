//! `docker compose up` and `down` of a compose file on a machine: the docker CLI's compose
//! plugin (which `rmachine setup` installs) run with `DOCKER_HOST` set to the machine's
//! docker.sock, as its `rmachine-NAME` context would, its output streamed to the view.
//! Compose is not done again here: the plugin is what people run by hand, so the project
//! it makes (its containers carry `com.docker.compose.project`) is the one the Containers
//! page groups, and `docker compose` on the command line sees the same thing.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

use crate::error::{CommandError, CommandResult, ErrorKind};
use crate::live::Sink;

/// What to do with a compose project.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ComposeAction {
    /// `up -d`: make and start the services (building images the file builds).
    Up,
    /// `down`: stop and remove the services' containers and networks.
    Down,
}

/// The Compose form (or a project group's Down), as the UI sends it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComposeRequest {
    pub action: ComposeAction,
    /// The compose file; for `down`, may be empty when `project` names the project.
    #[serde(default)]
    pub file: String,
    /// The project's name; empty: compose's own (the file's folder name).
    #[serde(default)]
    pub project: String,
}

/// A checked request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComposeSpec {
    pub action: ComposeAction,
    pub file: Option<PathBuf>,
    pub project: Option<String>,
}

fn invalid(message: String) -> CommandError {
    CommandError::new(ErrorKind::Invalid, message)
}

/// A project name compose accepts: lowercase letters, digits, `-` and `_`, starting with a
/// letter or digit.
pub fn check_project_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "project name \"{name}\": use lowercase letters, digits, - and _, starting with a letter or digit (or leave it empty for the folder's name)"
        ))
    }
}

impl ComposeRequest {
    pub fn parse(&self) -> CommandResult<ComposeSpec> {
        let project = self.project.trim();
        if !project.is_empty() {
            check_project_name(project).map_err(invalid)?;
        }
        let file = self.file.trim();
        let file = if file.is_empty() {
            if self.action == ComposeAction::Up || project.is_empty() {
                return Err(invalid(
                    "no compose file: choose one (compose.yaml, docker-compose.yml) with Browse…"
                        .into(),
                ));
            }
            None
        } else {
            let path = PathBuf::from(file);
            if !path.is_absolute() {
                return Err(invalid(format!(
                    "the compose file \"{file}\" is not an absolute path: choose it with Browse…, or write it from / on"
                )));
            }
            if !path.is_file() {
                return Err(invalid(format!(
                    "the compose file {file} does not exist: check the path, or choose it with Browse…"
                )));
            }
            Some(path)
        };
        Ok(ComposeSpec {
            action: self.action,
            file,
            project: (!project.is_empty()).then(|| project.to_string()),
        })
    }
}

impl ComposeSpec {
    /// The docker CLI's arguments.
    pub fn args(&self) -> Vec<String> {
        let mut args = vec!["compose".to_string()];
        if let Some(f) = &self.file {
            args.push("--file".into());
            args.push(f.display().to_string());
        }
        if let Some(p) = &self.project {
            args.push("--project-name".into());
            args.push(p.clone());
        }
        match self.action {
            ComposeAction::Up => args.extend(["up", "--detach"].map(String::from)),
            ComposeAction::Down => args.push("down".into()),
        }
        args
    }
}

/// What a compose run tells its view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ComposeEvent {
    /// A line compose wrote.
    Output { text: String },
    /// Compose finished with status 0.
    Done,
    /// It could not run, or failed; the message names the cause and what to do.
    Failed { message: String },
}

/// What to say when compose exits with `code` after writing `last` (its last lines).
pub fn failure_message(code: Option<i32>, last: &str) -> String {
    let status = code.map_or("was killed".to_string(), |c| {
        format!("exited with status {c}")
    });
    if last.contains("'compose' is not a docker command")
        || last.contains("unknown command: docker compose")
    {
        return "the docker compose plugin is not installed: run `rmachine setup`, which installs it, and try again".into();
    }
    format!("docker compose {status}; fix what its output above names (the compose file, a missing image or a folder outside the machine's shares) and try again")
}

async fn forward<R: AsyncRead + Unpin>(
    r: R,
    sink: Sink<ComposeEvent>,
    last: std::sync::Arc<std::sync::Mutex<String>>,
) {
    let mut lines = BufReader::new(r).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if let Ok(mut l) = last.lock() {
            l.push_str(&line);
            l.push('\n');
            let len = l.len();
            if len > 4096 {
                l.drain(..len - 4096);
            }
        }
        sink(ComposeEvent::Output { text: line });
    }
}

/// Runs compose against the engine at `docker_host` (a `unix://` or `npipe://` URL) until
/// it ends or the stream is closed, which kills it (run it in [`crate::live::Streams`]).
pub async fn run(docker_host: String, spec: ComposeSpec, sink: Sink<ComposeEvent>) {
    let dir = spec
        .file
        .as_deref()
        .and_then(Path::parent)
        .map(Path::to_path_buf);
    let mut cmd = tokio::process::Command::new("docker");
    cmd.args(spec.args())
        .env("DOCKER_HOST", &docker_host)
        .env_remove("DOCKER_CONTEXT")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(dir) = dir {
        cmd.current_dir(dir);
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            sink(ComposeEvent::Failed {
                message: "the docker CLI is not installed: run `rmachine setup`, which installs it with the compose plugin, and try again".into(),
            });
            return;
        }
        Err(e) => {
            sink(ComposeEvent::Failed {
                message: format!("cannot run docker compose: {e}; check that the docker CLI runs (`docker version`)"),
            });
            return;
        }
    };
    let last = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let out = child
        .stdout
        .take()
        .map(|o| forward(o, sink.clone(), last.clone()));
    let err = child
        .stderr
        .take()
        .map(|e| forward(e, sink.clone(), last.clone()));
    let pump = async {
        if let Some(o) = out {
            o.await
        }
    };
    let pump_err = async {
        if let Some(e) = err {
            e.await
        }
    };
    let (status, _, _) = tokio::join!(child.wait(), pump, pump_err);
    match status {
        Ok(s) if s.success() => sink(ComposeEvent::Done),
        Ok(s) => {
            let last = last.lock().map(|l| l.clone()).unwrap_or_default();
            sink(ComposeEvent::Failed {
                message: failure_message(s.code(), &last),
            })
        }
        Err(e) => sink(ComposeEvent::Failed {
            message: format!("docker compose did not finish: {e}; try again"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(action: ComposeAction, file: &str, project: &str) -> ComposeRequest {
        ComposeRequest {
            action,
            file: file.into(),
            project: project.into(),
        }
    }

    #[test]
    fn test_compose_requests_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("compose.yaml");
        std::fs::write(&file, "services: {}\n").unwrap();
        let f = file.display().to_string();
        let spec = req(ComposeAction::Up, &f, "shop").parse().unwrap();
        assert_eq!(
            spec.args(),
            [
                "compose",
                "--file",
                f.as_str(),
                "--project-name",
                "shop",
                "up",
                "--detach"
            ]
        );
        // Down by the project's name alone (what a group's Down does).
        let spec = req(ComposeAction::Down, "", "shop").parse().unwrap();
        assert_eq!(spec.args(), ["compose", "--project-name", "shop", "down"]);

        let msg = |r: ComposeRequest| r.parse().unwrap_err().message;
        assert!(msg(req(ComposeAction::Up, "", "shop")).contains("no compose file"));
        assert!(msg(req(ComposeAction::Down, "", "")).contains("no compose file"));
        assert!(msg(req(ComposeAction::Up, "compose.yaml", "")).contains("not an absolute path"));
        let gone = dir.path().join("gone.yaml").display().to_string();
        assert!(msg(req(ComposeAction::Up, &gone, "")).contains("does not exist"));
        assert!(msg(req(ComposeAction::Up, &f, "My Shop")).contains("lowercase"));
    }

    #[test]
    fn test_project_names() {
        assert!(check_project_name("shop_1-a").is_ok());
        assert!(check_project_name("-shop").is_err());
        assert!(check_project_name("Shop").is_err());
        assert!(check_project_name("").is_err());
    }

    #[test]
    fn test_failures_name_the_remedy() {
        assert!(
            failure_message(Some(1), "docker: 'compose' is not a docker command.\n")
                .contains("rmachine setup")
        );
        let m = failure_message(Some(17), "yaml: line 3: bad\n");
        assert!(
            m.contains("exited with status 17") && m.contains("try again"),
            "{m}"
        );
        assert!(failure_message(None, "").contains("was killed"));
    }
}
