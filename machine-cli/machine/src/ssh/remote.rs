//! An ssh machine's host as rmachine knows it: connecting with the machine's pin,
//! preparing the host at create (probe, install, TLS) and the record of what was found
//! and changed there (`remote.json`), which `rm --purge-remote` undoes.

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::host_key::{self, HostKeyCheck};
use super::probe::{self, Probe};
use super::{install, tls, Auth, Connected, InstallMode, Session, SshError, SshSettings};
use crate::paths::MachinePaths;

/// Version of `remote.json`.
pub const RECORD_VERSION: u32 = 1;

/// How long an engine whose service is starting is waited for.
const ENGINE_STARTING_TIMEOUT: Duration = Duration::from_secs(180);

/// How long the engine's `_ping` may take.
const PING_TIMEOUT: Duration = Duration::from_secs(20);

/// `remote.json`: the probe at create and what rmachine changed on the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteRecord {
    pub version: u32,
    pub probe: Probe,
    /// Packages rmachine installed (`rm --purge-remote` removes them).
    #[serde(default)]
    pub installed: Vec<String>,
    /// The engine ran before rmachine came: it was adopted as it was.
    #[serde(default)]
    pub adopted: bool,
    /// The engine's version (`/version`).
    pub engine_version: Option<String>,
    /// The names and addresses of the engine's current server certificate.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tls_names: Vec<String>,
}

impl RemoteRecord {
    pub fn read(path: &Path) -> Option<RemoteRecord> {
        let bytes = std::fs::read(path).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    pub fn write(&self, path: &Path) -> Result<(), SshError> {
        let bytes = serde_json::to_vec_pretty(self).expect("the record always serializes");
        crate::store::write_atomic(path, &bytes)
            .map_err(|e| SshError::step(format!("writing {}", path.display()), e.to_string()))
    }
}

/// What `rmachine create --driver ssh` may do beyond the settings.
#[derive(Debug, Clone, Default)]
pub struct CreateOptions {
    /// The host key's expected fingerprint (`--ssh-host-key`), for a first use without
    /// trusting whatever key is offered.
    pub host_key: Option<String>,
    /// `--restart-engine`: an engine that already runs may be restarted (to listen with
    /// TLS).
    pub restart_engine: bool,
}

/// Connects to the machine's host: with its pin when there is one, else on first use
/// (checked against `expected` when given), pinning the key offered. `pinned` hears the
/// fingerprint of a key pinned now.
pub async fn connect(
    files: &MachinePaths,
    ssh: &SshSettings,
    auth: &Auth,
    expected: Option<&str>,
    pinned: &mut (dyn FnMut(&str) + Send),
) -> Result<Connected, SshError> {
    let pin_file = files.ssh_host_key();
    let target = ssh.target();
    let check = match host_key::read_pin(&pin_file)? {
        Some(key) => HostKeyCheck::Pinned(key),
        None => match expected {
            Some(f) => HostKeyCheck::Fingerprint(host_key::normalize_fingerprint(f)),
            None => HostKeyCheck::FirstUse,
        },
    };
    let first_use = !matches!(check, HostKeyCheck::Pinned(_));
    let connected = super::session::connect(&target, auth, check, &pin_file).await?;
    if first_use {
        host_key::write_pin(&pin_file, &connected.host_key, &target.host)?;
        pinned(&host_key::fingerprint(&connected.host_key));
    }
    Ok(connected)
}

/// The engine's `GET /version` through the remote socket: its version, or why it does
/// not answer.
pub async fn engine_version(session: &Session) -> Result<String, SshError> {
    let step = format!("reaching the engine at {}", super::REMOTE_DOCKER_SOCKET);
    let ask = async {
        let mut s = session.open_unix(super::REMOTE_DOCKER_SOCKET).await?;
        s.write_all(b"GET /version HTTP/1.0\r\nHost: docker\r\n\r\n")
            .await
            .map_err(|e| SshError::step(step.clone(), e.to_string()))?;
        let mut reply = Vec::new();
        (&mut s)
            .take(1 << 20)
            .read_to_end(&mut reply)
            .await
            .map_err(|e| SshError::step(step.clone(), e.to_string()))?;
        Ok::<Vec<u8>, SshError>(reply)
    };
    let reply = tokio::time::timeout(PING_TIMEOUT, ask)
        .await
        .map_err(|_| SshError::StepTimeout {
            step: step.clone(),
            seconds: PING_TIMEOUT.as_secs(),
        })??;
    let text = String::from_utf8_lossy(&reply);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
        return Err(SshError::step(
            step,
            format!(
                "the socket answered {:?}, not the Engine API",
                head.lines().next().unwrap_or_default()
            ),
        ));
    }
    let v: serde_json::Value = serde_json::from_str(body)
        .map_err(|e| SshError::step(step.clone(), format!("bad /version answer: {e}")))?;
    Ok(v["Version"].as_str().unwrap_or("unknown").to_string())
}

/// Prepares the host of a new ssh machine: connects (pinning the host key), probes,
/// installs the engine when there is none and `install` allows, checks that the engine
/// answers through ssh, and sets up TLS when asked. Writes `remote.json`.
pub async fn prepare(
    files: &MachinePaths,
    ssh: &SshSettings,
    auth: &Auth,
    options: &CreateOptions,
    progress: &mut (dyn FnMut(&str) + Send),
) -> Result<RemoteRecord, SshError> {
    let target = ssh.target();
    progress(&format!("connecting to {target}"));
    let pin_file = files.ssh_host_key();
    let Connected { session, .. } =
        connect(files, ssh, auth, options.host_key.as_deref(), &mut |f| {
            progress(&format!(
                "host key {f} of {} pinned in {}",
                target.address(),
                pin_file.display()
            ))
        })
        .await?;
    progress("probing the host");
    let mut found = probe::run(&session).await?;
    // An engine whose service is still starting (a host that just booted) is waited for.
    let deadline = tokio::time::Instant::now() + ENGINE_STARTING_TIMEOUT;
    while found.docker_service.as_deref() == Some("activating")
        && tokio::time::Instant::now() < deadline
    {
        progress("the host's engine is starting; waiting for it");
        tokio::time::sleep(Duration::from_secs(2)).await;
        found = probe::run(&session).await?;
    }
    progress(&format!(
        "{} on {}{}",
        found.os.pretty_name,
        found.arch,
        match (&found.dockerd, found.engine_running()) {
            (Some(_), true) => ", engine running",
            (Some(_), false) => ", engine installed, not running",
            (None, _) => ", no engine",
        }
    ));
    let mut record = RemoteRecord {
        version: RECORD_VERSION,
        probe: found.clone(),
        installed: Vec::new(),
        adopted: found.engine_running(),
        engine_version: None,
        tls_names: Vec::new(),
    };
    let mut session = session;
    if !found.has_engine() {
        if ssh.install == InstallMode::Never {
            return Err(SshError::step(
                "adopting the host's engine",
                format!(
                    "{target} has no Docker engine and --install never was given: install Docker there, or create with --install auto"
                ),
            ));
        }
        let plan = install::plan(&found.os)
            .map_err(|e| SshError::step("installing the engine", e.to_string()))?;
        if !found.systemd {
            return Err(SshError::step(
                "installing the engine",
                format!("{target} does not run systemd, which the engine's service needs; install Docker yourself and use --install never"),
            ));
        }
        if !found.sudo {
            return Err(SshError::step(
                "installing the engine",
                format!(
                    "it needs root, and {} has no passwordless sudo on {} (`sudo -n true` failed): allow it (a sudoers rule), log in as root, or install Docker yourself and use --install never",
                    found.user, target.host
                ),
            ));
        }
        let add_user = (!found.root).then_some(found.user.clone());
        record.installed =
            install::run(&session, &plan, found.root, add_user.as_deref(), progress).await?;
        // A new session, so that the user's new docker group applies to its channels.
        session.disconnect().await;
        session = connect(files, ssh, auth, None, &mut |_| {}).await?.session;
        found = probe::run(&session).await?;
        record.probe = found.clone();
    } else if !found.engine_running() {
        return Err(SshError::step(
            "adopting the host's engine",
            format!(
                "the engine on {target} is installed but not running (its service is {}): start it (`sudo systemctl start docker`), then create again",
                found.docker_service.as_deref().unwrap_or("unknown")
            ),
        ));
    }
    if !found.socket_access && !found.root {
        return Err(SshError::step(
            "reaching the engine",
            format!(
                "{user} cannot use {sock} on {host}: add it to the docker group (`sudo usermod -aG docker {user}`), then create again",
                user = found.user,
                sock = super::REMOTE_DOCKER_SOCKET,
                host = target.host
            ),
        ));
    }
    progress("checking the engine through ssh");
    record.engine_version = Some(engine_version(&session).await?);
    if ssh.engine_tls {
        if record.adopted && !options.restart_engine {
            return Err(SshError::step(
                "setting up the engine's TLS",
                format!(
                    "the engine on {target} already runs, and listening with TLS on {} means restarting it (its containers restart as their restart policies say): add --restart-engine to allow that",
                    super::ENGINE_TLS_PORT
                ),
            ));
        }
        progress("setting up the engine's TLS listener");
        record.tls_names = tls::setup(&session, files, &found, &target.host, true).await?;
        // The engine restarted: it must answer again.
        record.engine_version = Some(wait_engine(&session).await?);
    }
    record.write(&files.remote_record())?;
    session.disconnect().await;
    Ok(record)
}

/// Waits until the engine answers (after a restart).
pub async fn wait_engine(session: &Session) -> Result<String, SshError> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        match engine_version(session).await {
            Ok(v) => return Ok(v),
            Err(e) if tokio::time::Instant::now() > deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

/// Undoes what rmachine changed on the host (`rm --purge-remote`): the TLS drop-in and
/// certificates, and the packages it installed. An adopted engine keeps running.
pub async fn purge(
    session: &Session,
    record: &RemoteRecord,
    progress: &mut (dyn FnMut(&str) + Send),
) -> Result<(), SshError> {
    let root = record.probe.root;
    let mut script = String::from("set -e\n");
    script.push_str(&tls::removal_script());
    if !record.installed.is_empty() {
        let pkgs: Vec<&str> = record
            .installed
            .iter()
            .map(String::as_str)
            .filter(|p| {
                p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
            })
            .filter(|p| *p != "ca-certificates" && *p != "apparmor")
            .collect();
        progress(&format!("removing {}", pkgs.join(" ")));
        script.push_str(&format!(
            "export DEBIAN_FRONTEND=noninteractive\napt-get purge -y -q {}\n",
            pkgs.join(" ")
        ));
    }
    session
        .run_ok(
            "removing what rmachine installed on the host",
            install::as_root(root),
            Some(script.as_bytes()),
            Duration::from_secs(900),
        )
        .await?;
    Ok(())
}
