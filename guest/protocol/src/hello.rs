//! The first line of every host → guest connection.
//!
//! Host: `RMACHINE <version> <service> <token>\n`, where token is the machine's secret
//! (hex) or `-` on a carrier that authenticates by itself (vsock).
//! Agent: `OK <version>\n`, or `ERR <version> <message>\n` and then it closes.

use crate::{Service, PROTOCOL_VERSION};

const MAGIC: &str = "RMACHINE";

/// A parsed host hello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub version: u32,
    pub service: Service,
    /// `None` when the host sent `-`.
    pub token: Option<String>,
}

/// Why a hello line was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HelloError {
    #[error("not an rmachine hello line")]
    NotHello,
    #[error("host speaks protocol version {host}, this agent speaks {agent}")]
    VersionMismatch { host: u32, agent: u32 },
    #[error("unknown service {0:?}")]
    UnknownService(String),
    #[error("agent refused the connection: {0}")]
    Refused(String),
    #[error("agent speaks protocol version {agent}, this host speaks {host}")]
    AgentVersion { agent: u32, host: u32 },
}

/// Formats the host's hello line, newline included.
pub fn format_hello(service: Service, token: Option<&str>) -> String {
    format!(
        "{MAGIC} {PROTOCOL_VERSION} {} {}\n",
        service.name(),
        token.unwrap_or("-")
    )
}

/// Parses a host hello line (without its newline). A version mismatch is reported before
/// anything else is checked, so an old or new host always learns why.
pub fn parse_hello(line: &[u8]) -> Result<Hello, HelloError> {
    let text = std::str::from_utf8(line).map_err(|_| HelloError::NotHello)?;
    let mut parts = text.split(' ');
    if parts.next() != Some(MAGIC) {
        return Err(HelloError::NotHello);
    }
    let version: u32 = parts
        .next()
        .and_then(|v| v.parse().ok())
        .ok_or(HelloError::NotHello)?;
    if version != PROTOCOL_VERSION {
        return Err(HelloError::VersionMismatch {
            host: version,
            agent: PROTOCOL_VERSION,
        });
    }
    let service_name = parts.next().ok_or(HelloError::NotHello)?;
    let service = Service::from_name(service_name)
        .ok_or_else(|| HelloError::UnknownService(service_name.to_string()))?;
    let token = match parts.next() {
        Some("-") => None,
        Some(t) if !t.is_empty() => Some(t.to_string()),
        _ => return Err(HelloError::NotHello),
    };
    if parts.next().is_some() {
        return Err(HelloError::NotHello);
    }
    Ok(Hello {
        version,
        service,
        token,
    })
}

/// The agent's acceptance line, newline included.
pub fn format_ok() -> String {
    format!("OK {PROTOCOL_VERSION}\n")
}

/// The agent's refusal line, newline included. Newlines in the message are flattened.
pub fn format_err(message: &str) -> String {
    format!(
        "ERR {PROTOCOL_VERSION} {}\n",
        message.replace(['\n', '\r'], " ")
    )
}

/// Parses the agent's answer to a hello (without its newline).
pub fn parse_answer(line: &[u8]) -> Result<(), HelloError> {
    let text = std::str::from_utf8(line).map_err(|_| HelloError::NotHello)?;
    let (word, rest) = text.split_once(' ').ok_or(HelloError::NotHello)?;
    let (version, message) = match rest.split_once(' ') {
        Some((v, m)) => (v, m),
        None => (rest, ""),
    };
    let version: u32 = version.parse().map_err(|_| HelloError::NotHello)?;
    match word {
        "OK" if version == PROTOCOL_VERSION => Ok(()),
        "OK" => Err(HelloError::AgentVersion {
            agent: version,
            host: PROTOCOL_VERSION,
        }),
        "ERR" => Err(HelloError::Refused(message.to_string())),
        _ => Err(HelloError::NotHello),
    }
}

/// Compares two tokens in time independent of where they first differ.
pub fn token_matches(expected: &str, given: &str) -> bool {
    let (a, b) = (expected.as_bytes(), given.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_hello_round_trip() {
        let line = format_hello(Service::Engine, Some("abc123"));
        let hello = parse_hello(line.trim_end().as_bytes()).unwrap();
        assert_eq!(hello.service, Service::Engine);
        assert_eq!(hello.token.as_deref(), Some("abc123"));
        let line = format_hello(Service::Control, None);
        assert_eq!(parse_hello(line.trim_end().as_bytes()).unwrap().token, None);
    }

    #[test]
    fn test_hello_rejects_other_version_and_garbage() {
        assert_eq!(
            parse_hello(b"RMACHINE 99 control -"),
            Err(HelloError::VersionMismatch {
                host: 99,
                agent: PROTOCOL_VERSION
            })
        );
        assert_eq!(parse_hello(b"GET / HTTP/1.1"), Err(HelloError::NotHello));
        assert_eq!(
            parse_hello(b"RMACHINE 1 control"),
            Err(HelloError::NotHello)
        );
        assert_eq!(
            parse_hello(b"RMACHINE 1 control tok extra"),
            Err(HelloError::NotHello)
        );
        assert_eq!(parse_hello(&[0xff, 0xfe]), Err(HelloError::NotHello));
        assert_eq!(
            parse_hello(b"RMACHINE 1 ssh -"),
            Err(HelloError::UnknownService("ssh".into()))
        );
    }

    #[test]
    fn test_answer_parsing() {
        assert_eq!(parse_answer(format_ok().trim_end().as_bytes()), Ok(()));
        assert_eq!(
            parse_answer(format_err("bad\ntoken").trim_end().as_bytes()),
            Err(HelloError::Refused("bad token".into()))
        );
        assert_eq!(
            parse_answer(b"OK 7"),
            Err(HelloError::AgentVersion {
                agent: 7,
                host: PROTOCOL_VERSION
            })
        );
        assert_eq!(parse_answer(b"HTTP/1.1 400 Bad"), Err(HelloError::NotHello));
    }

    #[test]
    fn test_token_compare() {
        assert!(token_matches("abcd", "abcd"));
        assert!(!token_matches("abcd", "abce"));
        assert!(!token_matches("abcd", "abc"));
    }
}
