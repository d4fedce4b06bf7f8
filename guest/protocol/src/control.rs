//! The control service: one JSON object per line each way.
//!
//! Request: `{"v":1,"id":7,"op":"sync_time","unix_ns":1700000000000000000}`
//! Reply:   `{"v":1,"id":7,"ok":{"type":"time_synced","offset_ns":-1200}}`
//!      or  `{"v":1,"id":7,"error":{"kind":"bad_request","message":"..."}}`
//!
//! A line that cannot be parsed still gets an error reply (with `id` 0 when the id could
//! not be read), so a host never waits for an answer that will not come.
//!
//! Operations are added without a new protocol version: an agent that does not know an
//! operation answers `bad_request` (unknown variant), and the host falls back. So far:
//! `notify_changed` and `set_hosts` came after the first release.

use serde::{Deserialize, Serialize};

use crate::net::HostEntry;
use crate::PROTOCOL_VERSION;

/// An operation the host asks of the agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Liveness check.
    Ping {},
    /// The agent's and protocol's versions.
    Version {},
    /// State of the guest and its engine.
    Info {},
    /// Set the guest's wall clock to the host's.
    SyncTime {
        /// Host wall clock, nanoseconds since the Unix epoch.
        unix_ns: i64,
    },
    /// Stop the engine gracefully, sync, unmount and power off (or reboot).
    Shutdown {
        #[serde(default)]
        reboot: bool,
    },
    /// Files or folders of shared folders changed on the host (absolute paths, the same in
    /// the guest): the agent touches their attributes in the guest so that inotify
    /// watchers there (file watchers of dev servers) hear of it, which virtio-fs cannot
    /// tell them. At most [`MAX_CHANGED_PATHS`] paths.
    NotifyChanged { paths: Vec<String> },
    /// Replace the peer names of the guest's `/etc/hosts` (machines on the same networks),
    /// sent by the host agent when a peer starts or stops. At most
    /// [`crate::net::MAX_HOSTS`] entries; one invalid entry refuses the whole request
    /// (`bad_request`) and the file stays as it was. An agent older than this operation
    /// answers `bad_request` too: the names of the config disk are then all it has.
    SetHosts { hosts: Vec<HostEntry> },
}

/// Most paths in one [`Request::NotifyChanged`] (the host sends their folders instead
/// when more changed at once).
pub const MAX_CHANGED_PATHS: usize = 256;

/// A request with its envelope (`v` and `id` beside the operation's fields).
#[derive(Debug, Clone, PartialEq)]
pub struct RequestEnvelope {
    pub v: u32,
    pub id: u64,
    pub request: Request,
}

/// The successful answer to a request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Reply {
    Pong,
    Version {
        agent: String,
        protocol: u32,
        kernel: String,
    },
    Info(Box<GuestInfo>),
    TimeSynced {
        /// Guest clock minus host clock before the change, in nanoseconds.
        offset_ns: i64,
    },
    ShuttingDown,
    /// Change notifications replayed: paths touched, paths skipped (outside every share,
    /// gone, or refused).
    Notified {
        touched: u32,
        skipped: u32,
    },
    /// `/etc/hosts` rewritten with this many peer entries.
    HostsSet {
        count: u32,
    },
}

/// What went wrong with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The line was not a valid request.
    BadRequest,
    /// The line exceeded [`crate::line::MAX_CONTROL_LINE`].
    TooLong,
    /// The request's protocol version is not the agent's.
    Version,
    /// The request was valid but carrying it out failed.
    Failed,
}

/// An error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReply {
    pub kind: ErrorKind,
    pub message: String,
}

/// The body of a reply: exactly one of `ok` or `error`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Ok(Reply),
    Error(ErrorReply),
}

/// A reply with its envelope.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplyEnvelope {
    pub v: u32,
    pub id: u64,
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// State of a supervised guest process (containerd, dockerd).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServiceState {
    /// Not started yet (the agent is still setting up).
    Pending,
    /// Started, not answering yet.
    Starting,
    /// Answering.
    Running,
    /// Exited; waiting out the backoff before a restart.
    Restarting,
    /// Stopped on purpose (shutdown).
    Stopped,
    /// Could not be started at all (missing binary, data disk not mounted).
    Failed,
}

/// A supervised process as reported by `info`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessInfo {
    pub state: ServiceState,
    pub pid: Option<u32>,
    pub restarts: u32,
    pub last_error: Option<String>,
}

/// The guest's state, as reported by `info`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GuestInfo {
    pub agent: String,
    pub protocol: u32,
    pub kernel: String,
    pub hostname: String,
    pub uptime_s: f64,
    pub mem_total_kib: u64,
    pub mem_available_kib: u64,
    pub cpus: u32,
    /// IPv4 address of the guest's network interface, if it got one.
    pub ip: Option<String>,
    /// Whether the data disk is mounted at /var/lib/docker's parent.
    pub data_disk_mounted: bool,
    pub containerd: ProcessInfo,
    pub dockerd: ProcessInfo,
    /// The steps of this boot as the agent saw them, in the order they finished (absent
    /// from agents older than it: empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub boot_phases: Vec<BootPhase>,
}

/// One finished step of the guest's boot, on the guest's boot clock: milliseconds since
/// the kernel started counting time (`CLOCK_BOOTTIME`, the clock of `uptime_s`), so the
/// host can place it on its own clock from one `info` reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootPhase {
    /// What finished ("agent started", "data disk mounted", "dockerd ready").
    pub name: String,
    pub ms: u64,
}

/// Most phases one boot reports (the agent records a fixed handful; a guest claiming
/// more is not believed past this).
pub const MAX_BOOT_PHASES: usize = 32;

/// Why a control line could not be turned into a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseFailure {
    /// The id to answer with (0 when it could not be read).
    pub id: u64,
    pub error: ErrorReply,
}

/// Parses one request line. Checks the version before the operation, so a host of
/// another version always hears why.
pub fn parse_request(line: &[u8]) -> Result<RequestEnvelope, ParseFailure> {
    #[derive(Deserialize)]
    struct Probe {
        v: Option<u32>,
        id: Option<u64>,
    }
    let bad = |id: u64, kind: ErrorKind, message: String| ParseFailure {
        id,
        error: ErrorReply { kind, message },
    };
    let probe: Probe = serde_json::from_slice(line)
        .map_err(|e| bad(0, ErrorKind::BadRequest, format!("not a JSON object: {e}")))?;
    let id = probe.id.unwrap_or(0);
    match probe.v {
        Some(PROTOCOL_VERSION) => {}
        Some(other) => {
            return Err(bad(
                id,
                ErrorKind::Version,
                format!("request has protocol version {other}, agent speaks {PROTOCOL_VERSION}"),
            ))
        }
        None => return Err(bad(id, ErrorKind::BadRequest, "missing field `v`".into())),
    }
    // Strip the envelope and parse the rest strictly (serde's flatten cannot be combined
    // with deny_unknown_fields).
    let mut fields: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(line)
        .map_err(|e| bad(id, ErrorKind::BadRequest, format!("not a JSON object: {e}")))?;
    fields.remove("v");
    fields.remove("id");
    let request = serde_json::from_value(serde_json::Value::Object(fields))
        .map_err(|e| bad(id, ErrorKind::BadRequest, e.to_string()))?;
    Ok(RequestEnvelope {
        v: PROTOCOL_VERSION,
        id,
        request,
    })
}

/// Serializes a request line, newline included.
pub fn encode_request(id: u64, request: Request) -> String {
    let mut value = serde_json::to_value(request).expect("control messages always serialize");
    if let Some(fields) = value.as_object_mut() {
        fields.insert("v".into(), PROTOCOL_VERSION.into());
        fields.insert("id".into(), id.into());
    }
    encode_line(&value)
}

/// Serializes a reply line, newline included.
pub fn encode_reply(id: u64, outcome: Outcome) -> String {
    encode_line(&ReplyEnvelope {
        v: PROTOCOL_VERSION,
        id,
        outcome,
    })
}

fn encode_line<T: Serialize>(value: &T) -> String {
    // Serializing these plain data types cannot fail: no maps with non-string keys, no
    // custom serializers.
    let mut s = serde_json::to_string(value).expect("control messages always serialize");
    s.push('\n');
    s
}

/// Why a reply line was not usable by the host.
#[derive(Debug, thiserror::Error)]
pub enum ReplyError {
    #[error("agent reply is not valid: {0}")]
    Invalid(#[source] serde_json::Error),
    #[error("agent speaks protocol version {agent}, this host speaks {host}")]
    Version { agent: u32, host: u32 },
    #[error("agent answered request {got}, expected {want}")]
    WrongId { got: u64, want: u64 },
    #[error("agent error ({kind:?}): {message}")]
    Agent { kind: ErrorKind, message: String },
}

/// Parses a reply line for request `want_id`, turning agent errors into `Err`.
pub fn parse_reply(line: &[u8], want_id: u64) -> Result<Reply, ReplyError> {
    #[derive(Deserialize)]
    struct Probe {
        v: u32,
    }
    let probe: Probe = serde_json::from_slice(line).map_err(ReplyError::Invalid)?;
    if probe.v != PROTOCOL_VERSION {
        return Err(ReplyError::Version {
            agent: probe.v,
            host: PROTOCOL_VERSION,
        });
    }
    let env: ReplyEnvelope = serde_json::from_slice(line).map_err(ReplyError::Invalid)?;
    if env.id != want_id && env.id != 0 {
        return Err(ReplyError::WrongId {
            got: env.id,
            want: want_id,
        });
    }
    match env.outcome {
        Outcome::Ok(reply) => Ok(reply),
        Outcome::Error(e) => Err(ReplyError::Agent {
            kind: e.kind,
            message: e.message,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_request_round_trip_every_op() {
        let ops = [
            Request::Ping {},
            Request::Version {},
            Request::Info {},
            Request::SyncTime {
                unix_ns: 1_700_000_000_123_456_789,
            },
            Request::Shutdown { reboot: true },
            Request::SetHosts {
                hosts: vec![HostEntry {
                    name: "worker".into(),
                    ip: "192.168.127.3".into(),
                }],
            },
            Request::SetHosts { hosts: Vec::new() },
        ];
        for (i, op) in ops.into_iter().enumerate() {
            let line = encode_request(i as u64 + 1, op.clone());
            assert!(line.ends_with('\n'));
            let env = parse_request(line.trim_end().as_bytes()).unwrap();
            assert_eq!(env.id, i as u64 + 1);
            assert_eq!(env.request, op);
        }
    }

    #[test]
    fn test_info_of_an_older_agent_has_no_boot_phases() {
        let line = r#"{"agent":"0.1.0","protocol":1,"kernel":"6.12","hostname":"m","uptime_s":2.0,
            "mem_total_kib":1,"mem_available_kib":1,"cpus":1,"ip":null,"data_disk_mounted":true,
            "containerd":{"state":"running","pid":1,"restarts":0,"last_error":null},
            "dockerd":{"state":"running","pid":2,"restarts":0,"last_error":null}}"#;
        let info: GuestInfo = serde_json::from_str(line).unwrap();
        assert!(info.boot_phases.is_empty());
    }

    #[test]
    fn test_shutdown_reboot_defaults_to_false() {
        let env = parse_request(br#"{"v":1,"id":3,"op":"shutdown"}"#).unwrap();
        assert_eq!(env.request, Request::Shutdown { reboot: false });
    }

    #[test]
    fn test_reply_round_trip() {
        let info = GuestInfo {
            agent: "0.1.0".into(),
            protocol: 1,
            kernel: "6.12".into(),
            hostname: "rmachine".into(),
            uptime_s: 1.5,
            mem_total_kib: 1000,
            mem_available_kib: 500,
            cpus: 2,
            ip: Some("10.0.2.15".into()),
            data_disk_mounted: true,
            containerd: ProcessInfo {
                state: ServiceState::Running,
                pid: Some(10),
                restarts: 0,
                last_error: None,
            },
            dockerd: ProcessInfo {
                state: ServiceState::Restarting,
                pid: None,
                restarts: 2,
                last_error: Some("exit 1".into()),
            },
            boot_phases: vec![BootPhase {
                name: "agent started".into(),
                ms: 812,
            }],
        };
        for reply in [
            Reply::Pong,
            Reply::Info(Box::new(info)),
            Reply::TimeSynced { offset_ns: -5 },
            Reply::HostsSet { count: 3 },
        ] {
            let line = encode_reply(9, Outcome::Ok(reply.clone()));
            assert_eq!(parse_reply(line.trim_end().as_bytes(), 9).unwrap(), reply);
        }
        let line = encode_reply(
            4,
            Outcome::Error(ErrorReply {
                kind: ErrorKind::Failed,
                message: "nope".into(),
            }),
        );
        match parse_reply(line.trim_end().as_bytes(), 4) {
            Err(ReplyError::Agent {
                kind: ErrorKind::Failed,
                message,
            }) => assert_eq!(message, "nope"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn test_unknown_version_is_an_error_with_the_id() {
        let err = parse_request(br#"{"v":2,"id":5,"op":"ping"}"#).unwrap_err();
        assert_eq!(err.id, 5);
        assert_eq!(err.error.kind, ErrorKind::Version);
        assert!(
            err.error.message.contains("version 2"),
            "{}",
            err.error.message
        );
    }

    #[test]
    fn test_garbage_and_unknown_ops_are_bad_requests() {
        let err = parse_request(b"\x00\x01garbage").unwrap_err();
        assert_eq!((err.id, err.error.kind), (0, ErrorKind::BadRequest));
        let err = parse_request(br#"{"v":1,"id":8,"op":"format_disk"}"#).unwrap_err();
        assert_eq!((err.id, err.error.kind), (8, ErrorKind::BadRequest));
        let err = parse_request(br#"{"id":8,"op":"ping"}"#).unwrap_err();
        assert_eq!(err.error.kind, ErrorKind::BadRequest);
        let err = parse_request(br#"{"v":1,"id":8,"op":"ping","extra":1}"#).unwrap_err();
        assert_eq!(err.error.kind, ErrorKind::BadRequest);
    }

    #[test]
    fn test_set_hosts_wire_format_and_malformed_bodies() {
        let env = parse_request(
            br#"{"v":1,"id":6,"op":"set_hosts","hosts":[{"name":"a","ip":"10.0.0.1"}]}"#,
        )
        .unwrap();
        assert_eq!(
            env.request,
            Request::SetHosts {
                hosts: vec![HostEntry {
                    name: "a".into(),
                    ip: "10.0.0.1".into()
                }]
            }
        );
        for bad in [
            &br#"{"v":1,"id":6,"op":"set_hosts"}"#[..],
            br#"{"v":1,"id":6,"op":"set_hosts","hosts":"a"}"#,
            br#"{"v":1,"id":6,"op":"set_hosts","hosts":[["a"]]}"#,
            br#"{"v":1,"id":6,"op":"set_hosts","hosts":[{"name":1,"ip":"10.0.0.1"}]}"#,
            br#"{"v":1,"id":6,"op":"set_hosts","hosts":[{"name":"a"}]}"#,
            br#"{"v":1,"id":6,"op":"set_hosts","hosts":[],"extra":1}"#,
        ] {
            let err = parse_request(bad).unwrap_err();
            assert_eq!((err.id, err.error.kind), (6, ErrorKind::BadRequest));
        }
    }

    #[test]
    fn test_reply_from_other_version_is_refused() {
        let err = parse_reply(br#"{"v":3,"id":1,"ok":{"type":"pong"}}"#, 1).unwrap_err();
        assert!(matches!(err, ReplyError::Version { agent: 3, .. }), "{err}");
        let err = parse_reply(br#"{"v":1,"id":2,"ok":{"type":"pong"}}"#, 1).unwrap_err();
        assert!(
            matches!(err, ReplyError::WrongId { got: 2, want: 1 }),
            "{err}"
        );
    }
}
