//! The container engine: containerd, then dockerd once containerd answers, each under
//! its own [`Supervisor`].

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rmachine_protocol::control::{ProcessInfo, ServiceState};
use tokio::sync::watch;
use tracing::info;

use crate::reaper::Reaper;
use crate::supervisor::{Policy, Readiness, Spec, StartAfter, Supervisor};

pub const CONTAINERD: &str = "/usr/bin/containerd";
pub const DOCKERD: &str = "/usr/sbin/dockerd";
pub const CONTAINERD_SOCK: &str = "/run/containerd/containerd.sock";
pub const DOCKER_SOCK: &str = "/run/docker.sock";
pub const CONTAINERD_LOG: &str = "/var/log/containerd.log";
pub const DOCKERD_LOG: &str = "/var/log/docker.log";
/// The engine's settings from the config disk (the root filesystem is read-only).
pub const DAEMON_JSON: &str = "/run/rmachine/daemon.json";

/// How long dockerd may take to stop before it is killed.
pub const DOCKERD_STOP_GRACE: Duration = Duration::from_secs(20);
/// How long containerd may take to stop before it is killed.
pub const CONTAINERD_STOP_GRACE: Duration = Duration::from_secs(10);
/// dockerd starts after containerd answers, or after this long regardless.
const CONTAINERD_WAIT: Duration = Duration::from_secs(30);

/// The running engine.
pub struct Engine {
    containerd: Supervisor,
    dockerd: Supervisor,
}

fn containerd_spec() -> Spec {
    Spec {
        name: "containerd",
        program: CONTAINERD.into(),
        args: Vec::new(),
        log_path: Some(CONTAINERD_LOG.into()),
        readiness: Readiness::UnixSocket(CONTAINERD_SOCK.into()),
    }
}

/// dockerd's command; `host_gateway` is the address `host-gateway` stands for in a
/// container's extra hosts (`host.docker.internal:host-gateway`): the host as the guest
/// reaches it.
fn dockerd_spec(host_gateway: Option<&str>, daemon_json: Option<&str>) -> Spec {
    let mut args = vec![
        format!("--containerd={CONTAINERD_SOCK}"),
        "-H".into(),
        format!("unix://{DOCKER_SOCK}"),
    ];
    if let Some(addr) = host_gateway {
        args.push(format!("--host-gateway-ip={addr}"));
    }
    if let Some(path) = daemon_json {
        args.push(format!("--config-file={path}"));
    }
    Spec {
        name: "dockerd",
        program: DOCKERD.into(),
        args,
        log_path: Some(DOCKERD_LOG.into()),
        readiness: Readiness::HttpOk {
            socket: PathBuf::from(DOCKER_SOCK),
            path: "/_ping",
        },
    }
}

impl Engine {
    /// Starts containerd now and dockerd as soon as containerd answers.
    pub fn start(
        reaper: &Reaper,
        host_gateway: Option<&str>,
        daemon_json: Option<&str>,
        containerd_info: Arc<watch::Sender<ProcessInfo>>,
        dockerd_info: Arc<watch::Sender<ProcessInfo>>,
    ) -> Engine {
        info!("starting containerd and dockerd");
        let after = StartAfter {
            name: "containerd",
            info: containerd_info.subscribe(),
            timeout: CONTAINERD_WAIT,
        };
        let containerd = Supervisor::start(
            containerd_spec(),
            Policy::ENGINE,
            None,
            reaper.clone(),
            containerd_info,
        );
        let dockerd = Supervisor::start(
            dockerd_spec(host_gateway, daemon_json),
            Policy::ENGINE,
            Some(after),
            reaper.clone(),
            dockerd_info,
        );
        Engine {
            containerd,
            dockerd,
        }
    }

    /// Stops dockerd, then containerd, each with its grace period.
    pub async fn stop(self) {
        self.dockerd.stop(DOCKERD_STOP_GRACE).await;
        self.containerd.stop(CONTAINERD_STOP_GRACE).await;
    }
}

/// Marks both engine processes failed: they will not be started.
pub fn mark_failed(infos: [&watch::Sender<ProcessInfo>; 2], reason: &str) {
    for info in infos {
        info.send_modify(|i| {
            i.state = ServiceState::Failed;
            i.last_error = Some(reason.to_string());
        });
    }
}

/// The wire name of a state, as in `info` replies.
pub fn state_name(state: ServiceState) -> &'static str {
    match state {
        ServiceState::Pending => "pending",
        ServiceState::Starting => "starting",
        ServiceState::Running => "running",
        ServiceState::Restarting => "restarting",
        ServiceState::Stopped => "stopped",
        ServiceState::Failed => "failed",
    }
}

/// Writes the engine's settings for dockerd; `None` when there are none. A file that
/// cannot be written leaves dockerd on its defaults, with an error logged.
pub fn write_daemon_json(
    settings: Option<&serde_json::Map<String, serde_json::Value>>,
    path: &std::path::Path,
) -> Option<String> {
    let settings = settings.filter(|s| !s.is_empty())?;
    let text = serde_json::to_vec_pretty(settings).expect("a JSON object serializes");
    let written = path
        .parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|()| std::fs::write(path, text));
    match written {
        Ok(()) => {
            info!(keys = settings.len(), "engine settings written");
            Some(path.display().to_string())
        }
        Err(e) => {
            tracing::error!(error = %e, path = %path.display(), "cannot write the engine's settings; dockerd starts with its defaults");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_engine_settings_become_daemon_json() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rmachine/daemon.json");
        assert_eq!(write_daemon_json(None, &path), None);
        let mut settings = serde_json::Map::new();
        assert_eq!(
            write_daemon_json(Some(&settings), &path),
            None,
            "empty: none"
        );
        settings.insert("insecure-registries".into(), serde_json::json!(["r:5000"]));
        let written = write_daemon_json(Some(&settings), &path).unwrap();
        let back: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&written).unwrap()).unwrap();
        assert_eq!(back["insecure-registries"][0], "r:5000");
    }

    #[test]
    fn test_dockerd_uses_containerd_socket_and_docker_socket() {
        let spec = dockerd_spec(Some("10.0.2.2"), None);
        assert!(spec.args.iter().any(|a| a == "--host-gateway-ip=10.0.2.2"));
        assert!(dockerd_spec(None, Some(DAEMON_JSON))
            .args
            .iter()
            .any(|a| a == "--config-file=/run/rmachine/daemon.json"));
        assert!(!dockerd_spec(None, None)
            .args
            .iter()
            .any(|a| a.starts_with("--host-gateway-ip")));
        assert_eq!(
            spec.args,
            [
                "--containerd=/run/containerd/containerd.sock",
                "-H",
                "unix:///run/docker.sock",
                "--host-gateway-ip=10.0.2.2"
            ]
        );
        assert!(matches!(
            spec.readiness,
            Readiness::HttpOk { path: "/_ping", .. }
        ));
        assert!(
            matches!(containerd_spec().readiness, Readiness::UnixSocket(p) if p == std::path::Path::new(CONTAINERD_SOCK))
        );
    }

    #[test]
    fn test_state_names_match_the_wire() {
        for state in [
            ServiceState::Pending,
            ServiceState::Starting,
            ServiceState::Running,
            ServiceState::Restarting,
            ServiceState::Stopped,
            ServiceState::Failed,
        ] {
            assert_eq!(serde_json::to_value(state).unwrap(), state_name(state));
        }
    }

    #[test]
    fn test_mark_failed_keeps_the_reason() {
        let (a, _ra) = watch::channel(crate::supervisor::pending_info());
        let (b, rb) = watch::channel(crate::supervisor::pending_info());
        mark_failed([&a, &b], "data disk /dev/vdb: not found");
        assert_eq!(rb.borrow().state, ServiceState::Failed);
        assert_eq!(
            rb.borrow().last_error.as_deref(),
            Some("data disk /dev/vdb: not found")
        );
    }
}
