//! One SSH connection to a remote host (russh): connect with a host key check, log in
//! with the ssh-agent's keys and then the key file, run commands, and open channels to
//! the remote's unix sockets (direct-streamlocal) and TCP ports (direct-tcpip).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::client::{self, Handle, Msg};
use russh::keys::ssh_key::PublicKey;
use russh::keys::PrivateKeyWithHashAlg;
use russh::{ChannelMsg, ChannelStream};

use super::host_key::{self, HostKeyCheck};
use super::{SshError, SshTarget};
use crate::sys::ssh_agent;

/// How long the TCP connection may take.
const TCP_TIMEOUT: Duration = Duration::from_secs(15);
/// How long the SSH handshake and login may take.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(30);
/// A keepalive after this much silence from the host; [`KEEPALIVE_MAX`] unanswered ones
/// close the connection (so a dead host is noticed within about a minute).
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(15);
const KEEPALIVE_MAX: usize = 4;
/// Most output kept from one command (garbage from the network stays bounded).
const MAX_OUTPUT: usize = 16 << 20;
/// Channel window: large enough for a published port's throughput over a fast link.
const WINDOW_SIZE: u32 = 16 << 20;

/// How to log in.
#[derive(Debug, Clone, Default)]
pub struct Auth {
    /// A key file to try after the agent's keys (`--ssh-key`); without it the usual
    /// `~/.ssh/id_ed25519`, `id_ecdsa` and `id_rsa`.
    pub key: Option<PathBuf>,
    /// The key file's passphrase, when it is encrypted (never stored).
    pub passphrase: Option<super::Secret>,
}

impl Auth {
    /// The key files to try, in order.
    pub fn key_files(&self) -> Vec<PathBuf> {
        if let Some(k) = &self.key {
            return vec![k.clone()];
        }
        let Some(home) = dirs::home_dir() else {
            return Vec::new();
        };
        ["id_ed25519", "id_ecdsa", "id_rsa"]
            .iter()
            .map(|n| home.join(".ssh").join(n))
            .filter(|p| p.is_file())
            .collect()
    }
}

/// Whether logging in with `auth` needs a passphrase that it lacks: the first key file
/// is encrypted and the ssh-agent does not hold it. Returns that key file.
pub async fn passphrase_needed(auth: &Auth) -> Option<PathBuf> {
    if auth.passphrase.is_some() {
        return None;
    }
    let key = auth.key_files().into_iter().next()?;
    let text = std::fs::read_to_string(&key).ok()?;
    let private = russh::keys::ssh_key::PrivateKey::from_openssh(text.trim()).ok()?;
    if !private.is_encrypted() {
        return None;
    }
    let in_agent = match ssh_agent::connect().await {
        Some(mut agent) => agent
            .request_identities()
            .await
            .map(|ids| {
                ids.iter()
                    .any(|k| k.key_data() == private.public_key().key_data())
            })
            .unwrap_or(false),
        None => false,
    };
    (!in_agent).then_some(key)
}

/// The russh handler: checks the host key and remembers the one offered.
struct Client {
    check: HostKeyCheck,
    offered: Arc<Mutex<Option<PublicKey>>>,
}

impl client::Handler for Client {
    type Error = russh::Error;

    async fn check_server_key(&mut self, key: &PublicKey) -> Result<bool, Self::Error> {
        *self
            .offered
            .lock()
            .expect("the offered-key lock is never poisoned: nothing panics while held") =
            Some(key.clone());
        Ok(self.check.accepts(key))
    }
}

/// A logged-in connection and the host key it was offered.
pub struct Connected {
    pub session: Session,
    pub host_key: PublicKey,
}

/// One SSH connection.
pub struct Session {
    handle: Handle<Client>,
    target: SshTarget,
}

/// What a remote command printed and how it ended.
#[derive(Debug, Clone, Default)]
pub struct ExecOutput {
    /// `None` when the host sent no exit status (the command was killed by a signal).
    pub status: Option<u32>,
    pub stdout: String,
    pub stderr: String,
}

impl ExecOutput {
    pub fn success(&self) -> bool {
        self.status == Some(0)
    }

    /// The last lines of stderr (else stdout), for error messages.
    pub fn tail(&self) -> String {
        let text = if self.stderr.trim().is_empty() {
            &self.stdout
        } else {
            &self.stderr
        };
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        lines[lines.len().saturating_sub(8)..].join("\n")
    }
}

/// Connects to `target`, checks its host key with `check` (`pin_file` names the pin in
/// errors) and logs in.
pub async fn connect(
    target: &SshTarget,
    auth: &Auth,
    check: HostKeyCheck,
    pin_file: &Path,
) -> Result<Connected, SshError> {
    let address = target.address();
    let tcp = tokio::time::timeout(TCP_TIMEOUT, tokio::net::TcpStream::connect(&address))
        .await
        .map_err(|_| SshError::ConnectTimeout {
            address: address.clone(),
            seconds: TCP_TIMEOUT.as_secs(),
        })?
        .map_err(|source| SshError::Unreachable {
            address: address.clone(),
            source,
        })?;
    let _ = tcp.set_nodelay(true);
    let config = Arc::new(client::Config {
        keepalive_interval: Some(KEEPALIVE_INTERVAL),
        keepalive_max: KEEPALIVE_MAX,
        window_size: WINDOW_SIZE,
        ..Default::default()
    });
    let offered = Arc::new(Mutex::new(None));
    let handler = Client {
        check: check.clone(),
        offered: offered.clone(),
    };
    let handshake =
        tokio::time::timeout(LOGIN_TIMEOUT, client::connect_stream(config, tcp, handler)).await;
    let handle = match handshake {
        Err(_) => {
            return Err(SshError::StepTimeout {
                step: format!("the ssh handshake with {target}"),
                seconds: LOGIN_TIMEOUT.as_secs(),
            })
        }
        Ok(Err(source)) => {
            return Err(match offered_key(&offered) {
                Some(key) if !check.accepts(&key) => key_refused(target, &check, &key, pin_file),
                _ => SshError::Handshake { address, source },
            })
        }
        Ok(Ok(handle)) => handle,
    };
    let mut session = Session {
        handle,
        target: target.clone(),
    };
    tokio::time::timeout(LOGIN_TIMEOUT, session.login(auth))
        .await
        .map_err(|_| SshError::StepTimeout {
            step: format!("the ssh login to {target}"),
            seconds: LOGIN_TIMEOUT.as_secs(),
        })??;
    let host_key = offered_key(&offered).ok_or_else(|| {
        SshError::step(
            format!("the ssh handshake with {}", target.address()),
            "the host offered no host key",
        )
    })?;
    Ok(Connected { session, host_key })
}

type AgentLogin<'a> = std::pin::Pin<
    Box<
        dyn std::future::Future<Output = Result<client::AuthResult, russh::AgentAuthError>>
            + Send
            + 'a,
    >,
>;

/// Logs in with an ssh-agent's key. Boxed as `Send` here, where its lifetimes are
/// concrete: the compiler cannot prove russh's signer future `Send` for every lifetime
/// when it is left inside a larger future.
fn agent_login<'a>(
    handle: &'a mut Handle<Client>,
    user: &'a str,
    key: PublicKey,
    hash: Option<russh::keys::HashAlg>,
    agent: &'a mut ssh_agent::Agent,
) -> AgentLogin<'a> {
    Box::pin(handle.authenticate_publickey_with(user, key, hash, agent))
}

fn offered_key(offered: &Mutex<Option<PublicKey>>) -> Option<PublicKey> {
    offered
        .lock()
        .expect("the offered-key lock is never poisoned: nothing panics while held")
        .clone()
}

fn key_refused(
    target: &SshTarget,
    check: &HostKeyCheck,
    offered: &PublicKey,
    pin_file: &Path,
) -> SshError {
    let offered = host_key::fingerprint(offered);
    match check {
        HostKeyCheck::Pinned(pinned) => SshError::HostKeyChanged {
            host: target.address(),
            pinned: host_key::fingerprint(pinned),
            offered,
            pin_file: pin_file.to_path_buf(),
        },
        HostKeyCheck::Fingerprint(expected) => SshError::HostKeyMismatch {
            host: target.address(),
            expected: expected.clone(),
            offered,
        },
        HostKeyCheck::FirstUse => unreachable!("first use accepts any key"),
    }
}

impl Session {
    pub fn target(&self) -> &SshTarget {
        &self.target
    }

    /// The ssh-agent's keys first, then the key files.
    async fn login(&mut self, auth: &Auth) -> Result<(), SshError> {
        let user = self.target.user.clone();
        let rsa_hash = self
            .handle
            .best_supported_rsa_hash()
            .await
            .ok()
            .flatten()
            .flatten();
        let mut tried = Vec::new();
        if let Some(mut agent) = ssh_agent::connect().await {
            let identities = agent.request_identities().await.unwrap_or_default();
            for key in identities {
                tried.push(format!("agent key {}", host_key::fingerprint(&key)));
                let hash = key.algorithm().is_rsa().then_some(rsa_hash).flatten();
                match agent_login(&mut self.handle, &user, key, hash, &mut agent).await {
                    Ok(r) if r.success() => return Ok(()),
                    Ok(_) => {}
                    Err(e) => tracing::debug!(error = %e, "the ssh-agent could not sign"),
                }
            }
        }
        let files = auth.key_files();
        if files.is_empty() && tried.is_empty() {
            return Err(SshError::NoKeys {
                target: self.target.to_string(),
            });
        }
        for path in files {
            let key = load_key(&path, auth.passphrase.as_ref().map(|p| p.0.as_str()))?;
            tried.push(path.display().to_string());
            let hash = key.algorithm().is_rsa().then_some(rsa_hash).flatten();
            let r = self
                .handle
                .authenticate_publickey(&user, PrivateKeyWithHashAlg::new(Arc::new(key), hash))
                .await
                .map_err(|source| SshError::Handshake {
                    address: self.target.address(),
                    source,
                })?;
            if r.success() {
                return Ok(());
            }
        }
        Err(SshError::AuthFailed {
            target: self.target.to_string(),
            tried: tried.join(", "),
        })
    }

    /// Whether the connection is gone (keepalives unanswered, the host closed it).
    pub fn is_closed(&self) -> bool {
        self.handle.is_closed()
    }

    /// Closes the connection.
    pub async fn disconnect(&self) {
        let _ = self
            .handle
            .disconnect(russh::Disconnect::ByApplication, "", "en")
            .await;
    }

    /// A stream to the remote's unix socket `path` (direct-streamlocal, as `ssh -L
    /// local:/remote.sock`).
    pub async fn open_unix(&self, path: &str) -> Result<ChannelStream<Msg>, SshError> {
        let channel = self
            .handle
            .channel_open_direct_streamlocal(path)
            .await
            .map_err(|e| channel_error(format!("the host's {path}"), e))?;
        Ok(channel.into_stream())
    }

    /// A stream to `host:port` as the remote sees it (direct-tcpip, as `ssh -L`).
    pub async fn open_tcp(&self, host: &str, port: u16) -> Result<ChannelStream<Msg>, SshError> {
        let channel = self
            .handle
            .channel_open_direct_tcpip(host, u32::from(port), "127.0.0.1", 0)
            .await
            .map_err(|e| channel_error(format!("port {host}:{port} of the host"), e))?;
        Ok(channel.into_stream())
    }

    /// Runs `command` (through the login shell), with `stdin` given and closed; every
    /// line of output goes to `on_line` as it comes. Fails only when the command could
    /// not be run: its exit status is in the result.
    pub async fn exec(
        &self,
        command: &str,
        stdin: Option<&[u8]>,
        timeout: Duration,
        on_line: &mut (dyn FnMut(&str) + Send),
    ) -> Result<ExecOutput, SshError> {
        let exec_err = |source| SshError::Exec {
            command: short(command),
            source,
        };
        let run = async {
            let mut channel = self.handle.channel_open_session().await.map_err(exec_err)?;
            channel.exec(true, command).await.map_err(exec_err)?;
            if let Some(bytes) = stdin {
                channel.data(bytes).await.map_err(exec_err)?;
            }
            channel.eof().await.map_err(exec_err)?;
            let mut out = ExecOutput::default();
            let mut stdout = Vec::new();
            let mut stderr = Vec::new();
            let mut line = Vec::new();
            while let Some(msg) = channel.wait().await {
                match msg {
                    ChannelMsg::Data { data } => {
                        for &b in data.iter() {
                            if b == b'\n' {
                                on_line(&String::from_utf8_lossy(&line));
                                line.clear();
                            } else if line.len() < 4096 {
                                line.push(b);
                            }
                        }
                        if stdout.len() < MAX_OUTPUT {
                            stdout.extend_from_slice(&data);
                        }
                    }
                    ChannelMsg::ExtendedData { data, .. } if stderr.len() < MAX_OUTPUT => {
                        stderr.extend_from_slice(&data);
                    }
                    ChannelMsg::ExitStatus { exit_status } => out.status = Some(exit_status),
                    _ => {}
                }
            }
            if !line.is_empty() {
                on_line(&String::from_utf8_lossy(&line));
            }
            out.stdout = String::from_utf8_lossy(&stdout).into_owned();
            out.stderr = String::from_utf8_lossy(&stderr).into_owned();
            Ok(out)
        };
        tokio::time::timeout(timeout, run)
            .await
            .map_err(|_| SshError::StepTimeout {
                step: format!("`{}` on {}", short(command), self.target),
                seconds: timeout.as_secs(),
            })?
    }

    /// Runs `command` and wants exit status 0; `step` names it in the error, with the
    /// command's last lines of output.
    pub async fn run_ok(
        &self,
        step: &str,
        command: &str,
        stdin: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<ExecOutput, SshError> {
        let out = self.exec(command, stdin, timeout, &mut |_| {}).await?;
        if out.success() {
            Ok(out)
        } else {
            Err(SshError::step(
                step,
                format!(
                    "exit status {}: {}",
                    out.status.map(|s| s.to_string()).unwrap_or("none".into()),
                    out.tail()
                ),
            ))
        }
    }
}

fn channel_error(what: String, source: russh::Error) -> SshError {
    match source {
        russh::Error::ChannelOpenFailure(reason) => SshError::ForwardRefused {
            what,
            reason: format!(
                "{reason:?} (is forwarding allowed in the host's sshd_config, and may the user reach it?)"
            ),
        },
        source => SshError::Channel { what, source },
    }
}

/// The first line of a command, for messages.
fn short(command: &str) -> String {
    let first = command.lines().next().unwrap_or_default();
    if first.len() > 80 || command.lines().count() > 1 {
        format!("{}…", &first[..first.floor_char_boundary(80)])
    } else {
        first.to_string()
    }
}

/// Loads a private key file, decrypting it with `passphrase` when it is encrypted.
fn load_key(path: &Path, passphrase: Option<&str>) -> Result<russh::keys::PrivateKey, SshError> {
    match russh::keys::load_secret_key(path, None) {
        Ok(key) => Ok(key),
        Err(russh::keys::Error::KeyIsEncrypted) => match passphrase {
            None => Err(SshError::NeedsPassphrase {
                key: path.to_path_buf(),
            }),
            Some(p) => {
                russh::keys::load_secret_key(path, Some(p)).map_err(|_| SshError::BadPassphrase {
                    key: path.to_path_buf(),
                })
            }
        },
        Err(e) => Err(SshError::KeyFile {
            path: path.to_path_buf(),
            message: e.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_encrypted_key_needs_its_passphrase() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("id");
        let mut rng = rand::thread_rng();
        let key =
            russh::keys::PrivateKey::random(&mut rng, russh::keys::ssh_key::Algorithm::Ed25519)
                .unwrap();
        let encrypted = key.encrypt(&mut rng, "secret").unwrap();
        std::fs::write(
            &path,
            encrypted
                .to_openssh(russh::keys::ssh_key::LineEnding::LF)
                .unwrap()
                .as_bytes(),
        )
        .unwrap();
        assert!(matches!(
            load_key(&path, None),
            Err(SshError::NeedsPassphrase { .. })
        ));
        assert!(matches!(
            load_key(&path, Some("wrong")),
            Err(SshError::BadPassphrase { .. })
        ));
        let loaded = load_key(&path, Some("secret")).unwrap();
        assert_eq!(loaded.public_key().key_data(), key.public_key().key_data());
        std::fs::write(&path, "not a key").unwrap();
        assert!(matches!(
            load_key(&path, None),
            Err(SshError::KeyFile { .. })
        ));
    }
}
