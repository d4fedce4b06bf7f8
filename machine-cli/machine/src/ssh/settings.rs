//! The `[ssh]` table of an ssh machine's `machine.toml`, and the `user@host[:port]`
//! target it names.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::config::{ConfigError, DriverKind};

/// The SSH port when none is given.
pub const DEFAULT_PORT: u16 = 22;

/// Whether `rmachine create` may install an engine on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum InstallMode {
    /// Install Debian's `docker.io` through the host's apt when no engine is there.
    #[default]
    Auto,
    /// Adopt the host as it is: probe and record only.
    Never,
}

impl InstallMode {
    pub fn parse(text: &str) -> Result<InstallMode, String> {
        match text {
            "auto" => Ok(InstallMode::Auto),
            "never" => Ok(InstallMode::Never),
            other => Err(format!("unknown install mode {other:?}: use auto or never")),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            InstallMode::Auto => "auto",
            InstallMode::Never => "never",
        }
    }
}

/// The remote host of an ssh machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SshSettings {
    /// Host name or address.
    pub host: String,
    /// Login user.
    pub user: String,
    /// SSH port; default 22.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Private key file; default: the ssh-agent's keys, then `~/.ssh/id_ed25519`,
    /// `id_ecdsa`, `id_rsa`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    /// Whether an engine may be installed at create; default `auto`.
    #[serde(default)]
    pub install: InstallMode,
    /// The engine also listens on 2376 with mutual TLS (certificates in the machine's
    /// folder); default false.
    #[serde(default)]
    pub engine_tls: bool,
}

impl SshSettings {
    pub fn target(&self) -> SshTarget {
        SshTarget {
            user: self.user.clone(),
            host: self.host.clone(),
            port: self.port.unwrap_or(DEFAULT_PORT),
        }
    }
}

/// `user@host:port`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SshTarget {
    pub user: String,
    pub host: String,
    pub port: u16,
}

impl SshTarget {
    /// Parses `user@host[:port]` (`user@[::1]:2222` for an IPv6 address). The user is
    /// required: it is the account the engine is reached as.
    pub fn parse(text: &str) -> Result<SshTarget, String> {
        let bad = |why: &str| {
            format!("{text:?} is not an ssh target ({why}): use user@host or user@host:port")
        };
        let (user, rest) = text.split_once('@').ok_or_else(|| bad("no user"))?;
        if user.is_empty() || user.contains(char::is_whitespace) {
            return Err(bad("empty user"));
        }
        let (host, port) = if let Some(inner) = rest.strip_prefix('[') {
            let (host, after) = inner.split_once(']').ok_or_else(|| bad("unclosed ["))?;
            match after {
                "" => (host, None),
                p => (
                    host,
                    Some(p.strip_prefix(':').ok_or_else(|| bad("junk after ]"))?),
                ),
            }
        } else {
            match rest.rsplit_once(':') {
                Some((h, p)) if !h.contains(':') => (h, Some(p)),
                Some(_) => return Err(bad("put an IPv6 address in brackets")),
                None => (rest, None),
            }
        };
        if host.is_empty()
            || host.starts_with('-')
            || !host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || ".-_:%".contains(c))
        {
            return Err(bad("bad host"));
        }
        let port = match port {
            None => DEFAULT_PORT,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|&p| p != 0)
                .ok_or_else(|| bad("bad port"))?,
        };
        Ok(SshTarget {
            user: user.to_string(),
            host: host.to_string(),
            port,
        })
    }

    /// `host:port` for connecting (`[v6]:port`).
    pub fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Display for SshTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.port == DEFAULT_PORT && !self.host.contains(':') {
            write!(f, "{}@{}", self.user, self.host)
        } else {
            write!(f, "{}@{}", self.user, self.address())
        }
    }
}

/// An ssh machine needs its `[ssh]` table, and only an ssh machine has one.
pub fn validate_settings(
    driver: Option<DriverKind>,
    ssh: Option<&SshSettings>,
) -> Result<(), ConfigError> {
    let invalid = |message: &str| {
        Err(ConfigError::Invalid {
            field: "driver",
            message: message.to_string(),
        })
    };
    match (driver, ssh) {
        (Some(DriverKind::Ssh), None) => {
            invalid("ssh: the machine needs its host (`rmachine create NAME --driver ssh --ssh-host user@host`)")
        }
        (Some(DriverKind::Ssh), Some(s)) => SshTarget::parse(&s.target().to_string())
            .map(|_| ())
            .map_err(|message| ConfigError::Invalid {
                field: "ssh-host",
                message,
            }),
        (_, Some(_)) => invalid("only an ssh machine has [ssh] settings; create a new machine to change its driver"),
        _ => Ok(()),
    }
}

/// `rmachine config set ssh-host user@host[:port]`: the machine's host moved (the host
/// key pin stays: it is the same host).
pub fn set_host(ssh: &mut Option<SshSettings>, value: &str) -> Result<(), ConfigError> {
    let target = SshTarget::parse(value).map_err(|message| ConfigError::Invalid {
        field: "ssh-host",
        message,
    })?;
    let Some(s) = ssh.as_mut() else {
        return Err(ConfigError::Invalid {
            field: "ssh-host",
            message: "only an ssh machine has a host".into(),
        });
    };
    s.host = target.host;
    s.user = target.user;
    s.port = (target.port != DEFAULT_PORT).then_some(target.port);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_targets_parse_with_ports_and_ipv6() {
        let t = SshTarget::parse("me@host.example").unwrap();
        assert_eq!(
            (t.user.as_str(), t.host.as_str(), t.port),
            ("me", "host.example", 22)
        );
        assert_eq!(t.to_string(), "me@host.example");
        let t = SshTarget::parse("root@127.0.0.2:2222").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("127.0.0.2", 2222));
        assert_eq!(t.address(), "127.0.0.2:2222");
        let t = SshTarget::parse("me@[::1]:2200").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", 2200));
        assert_eq!(t.to_string(), "me@[::1]:2200");
        for bad in [
            "host",
            "@host",
            "me@",
            "me@host:0",
            "me@host:x",
            "me@::1",
            "me@-oProxyCommand=x",
            "me@[::1",
            "me@ho st",
        ] {
            assert!(SshTarget::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn test_ssh_settings_belong_to_ssh_machines() {
        let s = SshSettings {
            host: "h".into(),
            user: "u".into(),
            port: None,
            key: None,
            install: InstallMode::Auto,
            engine_tls: false,
        };
        assert!(validate_settings(Some(DriverKind::Ssh), Some(&s)).is_ok());
        assert!(validate_settings(Some(DriverKind::Ssh), None).is_err());
        assert!(validate_settings(Some(DriverKind::Qemu), Some(&s)).is_err());
        assert!(validate_settings(None, None).is_ok());
        let mut ssh = Some(s);
        set_host(&mut ssh, "v@other:2022").unwrap();
        assert_eq!(ssh.as_ref().unwrap().target().to_string(), "v@other:2022");
        assert!(set_host(&mut ssh, "nouser").is_err());
        assert!(set_host(&mut None, "v@other").is_err());
    }
}
