//! The control service: JSON request lines in, reply lines out, until the host closes.
//! A line that is not a valid request (garbage, another version, too long) gets an error
//! reply and the connection stays usable.

use rmachine_protocol::control::{
    encode_reply, parse_request, ErrorKind, ErrorReply, Outcome, Reply, Request, MAX_CHANGED_PATHS,
};
use rmachine_protocol::line::{read_line_limited, Line, MAX_CONTROL_LINE};
use rmachine_protocol::{AGENT_VERSION, PROTOCOL_VERSION};
use tracing::{debug, info, warn};

use crate::clock;
use crate::hosts::HostsError;
use crate::logging::error_chain;
use crate::notify;
use crate::server::{send, Context, Stream};
use crate::shutdown::ShutdownRequest;
use crate::sysinfo;

/// Serves requests until the host closes the connection.
pub async fn serve(stream: &mut Stream, ctx: &Context) -> std::io::Result<()> {
    loop {
        let (id, outcome, shutdown) = match read_line_limited(stream, MAX_CONTROL_LINE).await? {
            Line::Eof => return Ok(()),
            Line::TooLong { len } => {
                let message =
                    format!("request line of {len} bytes exceeds the limit of {MAX_CONTROL_LINE}");
                (0, error(ErrorKind::TooLong, message), None)
            }
            Line::Data(line) => match parse_request(&line) {
                Ok(envelope) => match envelope.request {
                    // File system work, possibly slow over virtio-fs: off the async threads.
                    Request::NotifyChanged { paths } => {
                        (envelope.id, notify_changed(paths, ctx).await, None)
                    }
                    request => {
                        let (outcome, shutdown) = handle(request, ctx);
                        (envelope.id, outcome, shutdown)
                    }
                },
                Err(failure) => (failure.id, Outcome::Error(failure.error), None),
            },
        };
        send(stream, &encode_reply(id, outcome)).await?;
        if let Some(request) = shutdown {
            // The reply went out first, so the host knows the shutdown was accepted. A
            // full channel means a shutdown is already under way.
            if let Err(e) = ctx.shutdown.try_send(request) {
                warn!(error = %e, "shutdown already requested");
            }
        }
    }
}

async fn notify_changed(paths: Vec<String>, ctx: &Context) -> Outcome {
    if paths.len() > MAX_CHANGED_PATHS {
        let message = format!(
            "{} paths exceed the limit of {MAX_CHANGED_PATHS}",
            paths.len()
        );
        return error(ErrorKind::BadRequest, message);
    }
    let shares = ctx.shares.clone();
    match tokio::task::spawn_blocking(move || notify::replay(&paths, &shares)).await {
        Ok((touched, skipped)) => {
            debug!(touched, skipped, "host changes replayed");
            Outcome::Ok(Reply::Notified { touched, skipped })
        }
        Err(e) => error(
            ErrorKind::Failed,
            format!("replaying host changes failed: {e}"),
        ),
    }
}

/// Rewrites /etc/hosts with the host's peer list (a small tmpfs file: written inline).
fn set_hosts(hosts: &[rmachine_protocol::net::HostEntry], ctx: &Context) -> Outcome {
    let Some(file) = &ctx.hosts else {
        let message = "this agent does not manage /etc/hosts (not PID 1)".to_string();
        return error(ErrorKind::Failed, message);
    };
    match file.write(hosts) {
        Ok(count) => {
            info!(peers = count, "peer names updated");
            Outcome::Ok(Reply::HostsSet {
                count: u32::try_from(count).unwrap_or(u32::MAX),
            })
        }
        Err(e @ HostsError::Invalid(_)) => error(ErrorKind::BadRequest, error_chain(&e)),
        Err(e) => error(ErrorKind::Failed, error_chain(&e)),
    }
}

fn error(kind: ErrorKind, message: String) -> Outcome {
    Outcome::Error(ErrorReply { kind, message })
}

/// Carries out one request. A shutdown is returned rather than started, so the reply can
/// be sent before it begins.
fn handle(request: Request, ctx: &Context) -> (Outcome, Option<ShutdownRequest>) {
    let outcome = match request {
        Request::Ping {} => Reply::Pong,
        Request::Version {} => Reply::Version {
            agent: AGENT_VERSION.to_string(),
            protocol: PROTOCOL_VERSION,
            kernel: sysinfo::kernel_release(),
        },
        Request::Info {} => Reply::Info(Box::new(ctx.status.guest_info())),
        Request::SyncTime { unix_ns } => match clock::sync(ctx.clock, unix_ns) {
            Ok(offset_ns) => {
                info!(
                    offset_ms = offset_ns / 1_000_000,
                    "clock synced to the host"
                );
                Reply::TimeSynced { offset_ns }
            }
            Err(e) => return (error(ErrorKind::Failed, error_chain(&e)), None),
        },
        Request::SetHosts { hosts } => return (set_hosts(&hosts, ctx), None),
        // Answered by `serve` (asynchronously); never routed here.
        Request::NotifyChanged { .. } => {
            let message = "notify_changed is served asynchronously".to_string();
            return (error(ErrorKind::Failed, message), None);
        }
        Request::Shutdown { reboot } => {
            let reason = if reboot {
                "reboot requested by the host"
            } else {
                "shutdown requested by the host"
            };
            info!(reboot, "{reason}");
            return (
                Outcome::Ok(Reply::ShuttingDown),
                Some(ShutdownRequest {
                    reboot,
                    reason: reason.into(),
                }),
            );
        }
    };
    (Outcome::Ok(outcome), None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::tests::{connect, start_server};
    use rmachine_protocol::control::{encode_request, parse_reply, ReplyEnvelope, ReplyError};
    use rmachine_protocol::Service;
    use std::time::Duration;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    use tokio::net::TcpStream;

    async fn roundtrip(stream: &mut BufReader<TcpStream>, line: &[u8]) -> String {
        stream.get_mut().write_all(line).await.unwrap();
        let mut reply = String::new();
        tokio::time::timeout(Duration::from_secs(10), stream.read_line(&mut reply))
            .await
            .unwrap()
            .unwrap();
        assert!(reply.ends_with('\n'), "{reply:?}");
        reply
    }

    fn envelope(reply: &str) -> ReplyEnvelope {
        serde_json::from_str(reply).unwrap()
    }

    async fn ping(stream: &mut BufReader<TcpStream>, id: u64) {
        let reply = roundtrip(stream, encode_request(id, Request::Ping {}).as_bytes()).await;
        assert_eq!(
            parse_reply(reply.trim_end().as_bytes(), id).unwrap(),
            Reply::Pong
        );
    }

    #[tokio::test]
    async fn test_ping_and_version() {
        let dir = tempfile::tempdir().unwrap();
        let server = start_server(dir.path().join("docker.sock")).await;
        let mut stream = connect(&server, Service::Control).await;
        ping(&mut stream, 1).await;
        let reply = roundtrip(
            &mut stream,
            encode_request(2, Request::Version {}).as_bytes(),
        )
        .await;
        match parse_reply(reply.trim_end().as_bytes(), 2).unwrap() {
            Reply::Version {
                agent,
                protocol,
                kernel,
            } => {
                assert_eq!(
                    (agent.as_str(), protocol),
                    (AGENT_VERSION, PROTOCOL_VERSION)
                );
                assert!(!kernel.is_empty());
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test]
    async fn test_notify_changed_touches_paths_inside_shares_only() {
        let dir = tempfile::tempdir().unwrap();
        let share = dir.path().join("share");
        std::fs::create_dir(&share).unwrap();
        std::fs::write(share.join("f.txt"), "x").unwrap();
        let server = start_server(dir.path().join("docker.sock")).await;
        let mut stream = connect(&server, Service::Control).await;
        let paths = vec![
            share.join("f.txt").display().to_string(),
            "/etc/passwd".to_string(),
        ];
        let line = encode_request(1, Request::NotifyChanged { paths });
        let reply = roundtrip(&mut stream, line.as_bytes()).await;
        assert_eq!(
            parse_reply(reply.trim_end().as_bytes(), 1).unwrap(),
            Reply::Notified {
                touched: 1,
                skipped: 1
            }
        );
        let paths = vec!["/x".to_string(); MAX_CHANGED_PATHS + 1];
        let line = encode_request(2, Request::NotifyChanged { paths });
        let reply = roundtrip(&mut stream, line.as_bytes()).await;
        match parse_reply(reply.trim_end().as_bytes(), 2) {
            Err(ReplyError::Agent { kind, .. }) => assert_eq!(kind, ErrorKind::BadRequest),
            other => panic!("unexpected {other:?}"),
        }
        ping(&mut stream, 3).await;
    }

    #[tokio::test]
    async fn test_set_hosts_rewrites_the_hosts_file_and_refuses_garbage() {
        use rmachine_protocol::net::HostEntry;
        let dir = tempfile::tempdir().unwrap();
        let server = start_server(dir.path().join("docker.sock")).await;
        let hosts_path = dir.path().join("hosts");
        let mut stream = connect(&server, Service::Control).await;
        let entry = |name: &str, ip: &str| HostEntry {
            name: name.into(),
            ip: ip.into(),
        };
        let line = encode_request(
            1,
            Request::SetHosts {
                hosts: vec![entry("worker", "192.168.127.3"), entry("test", "10.9.9.9")],
            },
        );
        let reply = roundtrip(&mut stream, line.as_bytes()).await;
        assert_eq!(
            parse_reply(reply.trim_end().as_bytes(), 1).unwrap(),
            Reply::HostsSet { count: 1 }
        );
        let written = std::fs::read_to_string(&hosts_path).unwrap();
        assert!(written.contains("192.168.127.3\tworker\n"), "{written}");
        assert!(!written.contains("10.9.9.9"), "{written}");
        // An invalid entry refuses the whole list; the file stays.
        let line = encode_request(
            2,
            Request::SetHosts {
                hosts: vec![entry("ok", "192.168.127.4"), entry("a b", "192.168.127.5")],
            },
        );
        let reply = roundtrip(&mut stream, line.as_bytes()).await;
        match parse_reply(reply.trim_end().as_bytes(), 2) {
            Err(ReplyError::Agent {
                kind: ErrorKind::BadRequest,
                message,
            }) => assert!(message.contains("a b"), "{message}"),
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(std::fs::read_to_string(&hosts_path).unwrap(), written);
        // Malformed bodies are bad requests with the id; the connection keeps serving.
        for (id, body) in [
            (3, r#"{"v":1,"id":3,"op":"set_hosts","hosts":7}"#),
            (
                4,
                r#"{"v":1,"id":4,"op":"set_hosts","hosts":[{"name":"x","ip":"1.2.3.4.5"}]}"#,
            ),
        ] {
            let reply = envelope(&roundtrip(&mut stream, format!("{body}\n").as_bytes()).await);
            assert_eq!(reply.id, id);
            assert!(
                matches!(
                    reply.outcome,
                    Outcome::Error(ErrorReply {
                        kind: ErrorKind::BadRequest,
                        ..
                    })
                ),
                "{reply:?}"
            );
        }
        assert_eq!(std::fs::read_to_string(&hosts_path).unwrap(), written);
        ping(&mut stream, 5).await;
    }

    #[tokio::test]
    async fn test_garbage_gets_bad_request_and_the_connection_keeps_serving() {
        let dir = tempfile::tempdir().unwrap();
        let server = start_server(dir.path().join("docker.sock")).await;
        let mut stream = connect(&server, Service::Control).await;
        let reply = envelope(&roundtrip(&mut stream, b"\x00garbage{{\n").await);
        assert_eq!(reply.id, 0);
        assert!(
            matches!(
                reply.outcome,
                Outcome::Error(ErrorReply {
                    kind: ErrorKind::BadRequest,
                    ..
                })
            ),
            "{reply:?}"
        );
        let reply =
            envelope(&roundtrip(&mut stream, b"{\"v\":1,\"id\":4,\"op\":\"format_disk\"}\n").await);
        assert_eq!(reply.id, 4);
        assert!(
            matches!(
                reply.outcome,
                Outcome::Error(ErrorReply {
                    kind: ErrorKind::BadRequest,
                    ..
                })
            ),
            "{reply:?}"
        );
        ping(&mut stream, 5).await;
    }

    #[tokio::test]
    async fn test_oversized_line_gets_too_long_and_the_connection_keeps_serving() {
        let dir = tempfile::tempdir().unwrap();
        let server = start_server(dir.path().join("docker.sock")).await;
        let mut stream = connect(&server, Service::Control).await;
        let mut line = format!(
            "{{\"v\":1,\"id\":9,\"op\":\"ping\",\"pad\":\"{}\"}}",
            "x".repeat(70_000)
        )
        .into_bytes();
        line.push(b'\n');
        let reply = envelope(&roundtrip(&mut stream, &line).await);
        match reply.outcome {
            Outcome::Error(ErrorReply {
                kind: ErrorKind::TooLong,
                message,
            }) => {
                assert!(
                    message.contains(&line.len().saturating_sub(1).to_string()),
                    "{message}"
                )
            }
            other => panic!("unexpected {other:?}"),
        }
        ping(&mut stream, 10).await;
    }

    #[tokio::test]
    async fn test_unknown_version_is_an_error_with_the_id() {
        let dir = tempfile::tempdir().unwrap();
        let server = start_server(dir.path().join("docker.sock")).await;
        let mut stream = connect(&server, Service::Control).await;
        let reply = roundtrip(&mut stream, b"{\"v\":2,\"id\":77,\"op\":\"ping\"}\n").await;
        match parse_reply(reply.trim_end().as_bytes(), 77) {
            Err(ReplyError::Agent {
                kind: ErrorKind::Version,
                message,
            }) => {
                assert!(
                    message.contains("version 2")
                        && message.contains(&format!("speaks {PROTOCOL_VERSION}")),
                    "{message}"
                );
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(envelope(&reply).id, 77);
        ping(&mut stream, 78).await;
    }

    #[tokio::test]
    async fn test_info_sync_time_and_shutdown() {
        let dir = tempfile::tempdir().unwrap();
        let mut server = start_server(dir.path().join("docker.sock")).await;
        server.ctx.status.set_ip(Some("10.0.2.15".into()));
        let mut stream = connect(&server, Service::Control).await;
        let reply = roundtrip(&mut stream, encode_request(1, Request::Info {}).as_bytes()).await;
        match parse_reply(reply.trim_end().as_bytes(), 1).unwrap() {
            Reply::Info(info) => {
                assert_eq!(
                    (info.hostname.as_str(), info.ip.as_deref()),
                    ("test", Some("10.0.2.15"))
                );
                assert!(info.mem_total_kib > 0);
            }
            other => panic!("unexpected {other:?}"),
        }
        // The test context observes the clock and never sets it.
        let host = clock::now_unix_ns() - 3_000_000_000;
        let reply = roundtrip(
            &mut stream,
            encode_request(2, Request::SyncTime { unix_ns: host }).as_bytes(),
        )
        .await;
        match parse_reply(reply.trim_end().as_bytes(), 2).unwrap() {
            Reply::TimeSynced { offset_ns } => assert!(
                (3_000_000_000..4_000_000_000).contains(&offset_ns),
                "{offset_ns}"
            ),
            other => panic!("unexpected {other:?}"),
        }
        let reply = roundtrip(
            &mut stream,
            encode_request(3, Request::SyncTime { unix_ns: -1 }).as_bytes(),
        )
        .await;
        assert!(matches!(
            parse_reply(reply.trim_end().as_bytes(), 3),
            Err(ReplyError::Agent {
                kind: ErrorKind::Failed,
                ..
            })
        ));
        assert!(server.shutdown.try_recv().is_err());
        let reply = roundtrip(
            &mut stream,
            encode_request(4, Request::Shutdown { reboot: true }).as_bytes(),
        )
        .await;
        assert_eq!(
            parse_reply(reply.trim_end().as_bytes(), 4).unwrap(),
            Reply::ShuttingDown
        );
        let request = tokio::time::timeout(Duration::from_secs(5), server.shutdown.recv())
            .await
            .unwrap()
            .unwrap();
        assert!(request.reboot);
    }
}
