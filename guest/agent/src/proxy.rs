//! The engine service: a byte-for-byte splice between the host's connection and the
//! engine's unix socket. Nothing is parsed, so HTTP upgrades and hijacked streams
//! (attach, `exec -it`, `logs -f`, events) pass untouched, and each direction is closed
//! on its own (half-close), as `docker` expects for attach with stdin.

use rmachine_protocol::hello::{format_err, format_ok};
use tokio::net::UnixStream;
use tracing::debug;

use crate::engine::state_name;
use crate::server::{send, Context, Stream};

/// Connects to the engine, answers the hello, splices until both sides are closed.
pub async fn serve(stream: &mut Stream, ctx: &Context) -> std::io::Result<()> {
    // Connect before answering the hello, so an engine that is down is reported on the
    // hello line instead of as a closed stream.
    let mut engine = match UnixStream::connect(&ctx.docker_sock).await {
        Ok(engine) => engine,
        Err(e) => {
            let dockerd = ctx.status.dockerd.borrow().clone();
            let mut message = format!("engine is not running: {}", state_name(dockerd.state));
            if let Some(last_error) = dockerd.last_error {
                message.push_str(&format!(" ({last_error})"));
            }
            debug!(socket = %ctx.docker_sock.display(), error = %e, "{message}");
            return send(stream, &format_err(&message)).await;
        }
    };
    send(stream, &format_ok()).await?;
    let (to_engine, from_engine) = tokio::io::copy_bidirectional(stream, &mut engine).await?;
    debug!(to_engine, from_engine, "engine connection closed");
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::server::tests::{connect, connect_with, start_server};
    use rmachine_protocol::control::ServiceState;
    use rmachine_protocol::hello::{format_err, format_hello, format_ok};
    use rmachine_protocol::Service;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::UnixListener;

    const REPLY: &[u8] =
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nOK";

    /// A fake engine that reads the request up to the end of its headers and answers.
    fn fake_engine(listener: UnixListener) {
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&buf[..n]),
                        }
                    }
                    assert!(
                        request.starts_with(b"GET /_ping HTTP/1.1\r\n"),
                        "{request:?}"
                    );
                    let _ = s.write_all(REPLY).await;
                });
            }
        });
    }

    #[tokio::test]
    async fn test_engine_splice_passes_a_request_sent_ahead_of_the_answer() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("docker.sock");
        fake_engine(UnixListener::bind(&socket).unwrap());
        let server = start_server(socket).await;
        // The hello and the request in one write, before the agent answered.
        let hello = format_hello(Service::Engine, Some("secret"));
        let (mut stream, answer) = connect_with(
            server.addr(Service::Engine),
            &format!("{hello}GET /_ping HTTP/1.1\r\nHost: docker\r\n\r\n"),
        )
        .await;
        assert_eq!(answer, format_ok());
        let mut reply = vec![0u8; REPLY.len()];
        tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut reply))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(reply, REPLY);
    }

    #[tokio::test]
    async fn test_engine_splice_half_close_keeps_the_reply_direction_open() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("docker.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        // This engine answers only after the client closed its sending side, like a
        // server reading a request body to its end.
        tokio::spawn(async move {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let mut request = Vec::new();
            s.read_to_end(&mut request).await.unwrap();
            s.write_all(format!("got {} bytes", request.len()).as_bytes())
                .await
                .unwrap();
        });
        let server = start_server(socket).await;
        let mut stream = connect(&server, Service::Engine).await;
        stream.get_mut().write_all(b"0123456789").await.unwrap();
        stream.get_mut().shutdown().await.unwrap();
        let mut reply = String::new();
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut reply))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(reply, "got 10 bytes");
    }

    #[tokio::test]
    async fn test_engine_down_is_reported_on_the_hello_line() {
        let dir = tempfile::tempdir().unwrap();
        let server = start_server(dir.path().join("missing.sock")).await;
        server.ctx.status.dockerd.send_modify(|i| {
            i.state = ServiceState::Restarting;
            i.last_error = Some("exited with code 1 after 0.5 s".into());
        });
        let (mut stream, answer) = connect_with(
            server.addr(Service::Engine),
            &format_hello(Service::Engine, Some("secret")),
        )
        .await;
        assert_eq!(
            answer,
            format_err("engine is not running: restarting (exited with code 1 after 0.5 s)")
        );
        let mut rest = Vec::new();
        assert_eq!(stream.read_to_end(&mut rest).await.unwrap(), 0);
    }
}
