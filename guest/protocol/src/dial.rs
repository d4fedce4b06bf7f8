//! The dial service: after the hello, the host sends one header line naming an address
//! inside the guest (`tcp 127.0.0.1 8080`), the agent dials it and answers `OK` or
//! `ERR <message>` ([`format_answer`], [`parse_answer`]). Then a tcp stream is spliced
//! byte for byte; a udp socket exchanges datagrams framed as a 2-byte big-endian length
//! followed by the payload.

use std::net::IpAddr;

/// Transport of a dial.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

/// A dial header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DialRequest {
    pub proto: Proto,
    pub guest_addr: IpAddr,
    pub guest_port: u16,
}

/// Why a dial header was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DialError {
    #[error("dial header must be `tcp|udp ADDRESS PORT`, got {0:?}")]
    Malformed(String),
    #[error("agent could not dial: {0}")]
    Refused(String),
    #[error("dial answer must be `OK` or `ERR MESSAGE`, got {0:?}")]
    BadAnswer(String),
}

/// The agent's answer to a dial header, newline included: `OK` once the address is
/// dialed, `ERR <message>` (newlines in the message flattened) when it could not be.
pub fn format_answer(result: Result<(), &str>) -> String {
    match result {
        Ok(()) => "OK\n".to_string(),
        Err(message) => format!("ERR {}\n", message.replace(['\n', '\r'], " ")),
    }
}

/// Parses the agent's answer to a dial header (without its newline).
pub fn parse_answer(line: &[u8]) -> Result<(), DialError> {
    match line {
        b"OK" => Ok(()),
        _ => match line.strip_prefix(b"ERR ") {
            Some(message) => Err(DialError::Refused(
                String::from_utf8_lossy(message).into_owned(),
            )),
            None => Err(DialError::BadAnswer(
                String::from_utf8_lossy(line).chars().take(80).collect(),
            )),
        },
    }
}

impl DialRequest {
    /// The header line, newline included.
    pub fn encode(&self) -> String {
        format!(
            "{} {} {}\n",
            self.proto.as_str(),
            self.guest_addr,
            self.guest_port
        )
    }

    /// Parses a header line (without its newline).
    pub fn parse(line: &[u8]) -> Result<DialRequest, DialError> {
        let text = String::from_utf8_lossy(line);
        let malformed = || DialError::Malformed(text.chars().take(80).collect());
        let mut parts = text.split(' ');
        let proto = match parts.next() {
            Some("tcp") => Proto::Tcp,
            Some("udp") => Proto::Udp,
            _ => return Err(malformed()),
        };
        let guest_addr: IpAddr = parts
            .next()
            .and_then(|a| a.parse().ok())
            .ok_or_else(malformed)?;
        let guest_port: u16 = parts
            .next()
            .and_then(|p| p.parse().ok())
            .filter(|&p| p != 0)
            .ok_or_else(malformed)?;
        if parts.next().is_some() {
            return Err(malformed());
        }
        Ok(DialRequest {
            proto,
            guest_addr,
            guest_port,
        })
    }
}

/// Largest udp datagram carried by the dial service.
pub const MAX_DATAGRAM: usize = 65_535;

/// Frames one datagram for the stream: 2-byte big-endian length, then the payload.
/// Returns `None` for a payload over [`MAX_DATAGRAM`].
pub fn frame_datagram(payload: &[u8]) -> Option<Vec<u8>> {
    let len = u16::try_from(payload.len()).ok()?;
    let mut out = Vec::with_capacity(2 + payload.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(payload);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_dial_round_trip() {
        let req = DialRequest {
            proto: Proto::Udp,
            guest_addr: "172.17.0.2".parse().unwrap(),
            guest_port: 53,
        };
        assert_eq!(
            DialRequest::parse(req.encode().trim_end().as_bytes()).unwrap(),
            req
        );
        let req = DialRequest {
            proto: Proto::Tcp,
            guest_addr: "::1".parse().unwrap(),
            guest_port: 8080,
        };
        assert_eq!(
            DialRequest::parse(req.encode().trim_end().as_bytes()).unwrap(),
            req
        );
    }

    #[test]
    fn test_dial_rejects_bad_headers() {
        for bad in [
            "",
            "tcp",
            "sctp 1.2.3.4 80",
            "tcp localhost 80",
            "tcp 1.2.3.4 0",
            "tcp 1.2.3.4 70000",
            "tcp 1.2.3.4 80 x",
        ] {
            assert!(
                DialRequest::parse(bad.as_bytes()).is_err(),
                "{bad:?} was accepted"
            );
        }
    }

    #[test]
    fn test_dial_answer_round_trip() {
        assert_eq!(format_answer(Ok(())), "OK\n");
        assert_eq!(parse_answer(b"OK"), Ok(()));
        let line = format_answer(Err("connect 127.0.0.1:80: refused\nbadly"));
        assert_eq!(line, "ERR connect 127.0.0.1:80: refused badly\n");
        assert_eq!(
            parse_answer(line.trim_end().as_bytes()),
            Err(DialError::Refused(
                "connect 127.0.0.1:80: refused badly".into()
            ))
        );
        assert!(matches!(
            parse_answer(b"HTTP/1.1 200 OK"),
            Err(DialError::BadAnswer(_))
        ));
    }

    #[test]
    fn test_datagram_framing() {
        assert_eq!(frame_datagram(b"hi").unwrap(), vec![0, 2, b'h', b'i']);
        assert!(frame_datagram(&vec![0; MAX_DATAGRAM + 1]).is_none());
    }
}
