//! The dial service: the host names an address inside the guest, the agent dials it and
//! splices. TCP is spliced byte for byte; UDP datagrams travel over the stream framed with
//! a 2-byte big-endian length, both ways.

use std::io::ErrorKind;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use rmachine_protocol::dial::{format_answer, frame_datagram, DialRequest, Proto, MAX_DATAGRAM};
use rmachine_protocol::line::{read_line_limited, Line, MAX_HEADER_LINE};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tracing::{debug, trace};

use crate::server::{send, Stream, HELLO_TIMEOUT};

/// How long a TCP connect inside the guest may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Reads the dial header, dials, answers, splices.
pub async fn serve(stream: &mut Stream) -> std::io::Result<()> {
    let header =
        match tokio::time::timeout(HELLO_TIMEOUT, read_line_limited(stream, MAX_HEADER_LINE)).await
        {
            Ok(Ok(Line::Data(header))) => header,
            Ok(Ok(Line::TooLong { len })) => {
                return send(
                    stream,
                    &format_answer(Err(&format!("dial header of {len} bytes is too long"))),
                )
                .await
            }
            Ok(Ok(Line::Eof)) => return Ok(()),
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                debug!("no dial header within {HELLO_TIMEOUT:?}");
                return Ok(());
            }
        };
    let request = match DialRequest::parse(&header) {
        Ok(request) => request,
        Err(e) => return send(stream, &format_answer(Err(&e.to_string()))).await,
    };
    let target = SocketAddr::new(request.guest_addr, request.guest_port);
    match request.proto {
        Proto::Tcp => splice_tcp(stream, target).await,
        Proto::Udp => relay_udp(stream, target).await,
    }
}

async fn splice_tcp(stream: &mut Stream, target: SocketAddr) -> std::io::Result<()> {
    let mut tcp = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(target)).await {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(e)) => {
            return send(
                stream,
                &format_answer(Err(&format!("connect tcp {target}: {e}"))),
            )
            .await
        }
        Err(_) => {
            let message = format!("connect tcp {target}: no answer within {CONNECT_TIMEOUT:?}");
            return send(stream, &format_answer(Err(&message))).await;
        }
    };
    let _ = tcp.set_nodelay(true);
    send(stream, &format_answer(Ok(()))).await?;
    let (up, down) = tokio::io::copy_bidirectional(stream, &mut tcp).await?;
    debug!(%target, to_guest = up, to_host = down, "dial tcp closed");
    Ok(())
}

async fn connect_udp(target: SocketAddr) -> std::io::Result<UdpSocket> {
    let local: SocketAddr = match target {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(local).await?;
    socket.connect(target).await?;
    Ok(socket)
}

async fn relay_udp(stream: &mut Stream, target: SocketAddr) -> std::io::Result<()> {
    let socket = match connect_udp(target).await {
        Ok(socket) => socket,
        Err(e) => {
            return send(
                stream,
                &format_answer(Err(&format!("connect udp {target}: {e}"))),
            )
            .await
        }
    };
    send(stream, &format_answer(Ok(()))).await?;
    let (mut reader, mut writer) = tokio::io::split(stream);
    let to_guest = async {
        let mut payload = Vec::with_capacity(MAX_DATAGRAM);
        loop {
            let mut len = [0u8; 2];
            match reader.read_exact(&mut len).await {
                Ok(_) => {}
                // The host closed the stream: the session is over.
                Err(e) if e.kind() == ErrorKind::UnexpectedEof => return Ok(()),
                Err(e) => return Err(e),
            }
            payload.resize(usize::from(u16::from_be_bytes(len)), 0);
            reader.read_exact(&mut payload).await?;
            trace!(%target, len = payload.len(), "datagram to the guest");
            if let Err(e) = socket.send(&payload).await {
                // Like a real UDP socket: a datagram that cannot be sent is lost.
                debug!(%target, error = %e, "udp send failed");
            }
        }
    };
    let to_host = async {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        loop {
            match socket.recv(&mut buf).await {
                Ok(n) => {
                    trace!(%target, len = n, "datagram to the host");
                    // recv never returns more than the buffer, MAX_DATAGRAM.
                    if let Some(frame) = frame_datagram(&buf[..n]) {
                        writer.write_all(&frame).await?;
                        writer.flush().await?;
                    }
                }
                // An ICMP error for an earlier datagram; later ones may still arrive.
                Err(e) if e.kind() == ErrorKind::ConnectionRefused => continue,
                Err(e) => return Err::<(), _>(e),
            }
        }
    };
    tokio::select! {
        result = to_guest => result,
        result = to_host => result,
    }
}

#[cfg(test)]
mod tests {
    use crate::server::tests::{connect, start_server};
    use rmachine_protocol::dial::{frame_datagram, parse_answer, DialError};
    use rmachine_protocol::Service;
    use std::time::Duration;
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    use tokio::net::{TcpListener, TcpStream, UdpSocket};

    async fn dial(header: &str) -> (BufReader<TcpStream>, Result<(), DialError>) {
        let dir = tempfile::tempdir().unwrap();
        let server = start_server(dir.path().join("docker.sock")).await;
        let mut stream = connect(&server, Service::Dial).await;
        stream.get_mut().write_all(header.as_bytes()).await.unwrap();
        let mut answer = String::new();
        tokio::time::timeout(Duration::from_secs(10), stream.read_line(&mut answer))
            .await
            .unwrap()
            .unwrap();
        (stream, parse_answer(answer.trim_end().as_bytes()))
    }

    #[tokio::test]
    async fn test_dial_tcp_splices_to_an_echo_listener() {
        let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = echo.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut s, _) = echo.accept().await.unwrap();
            let (mut r, mut w) = s.split();
            tokio::io::copy(&mut r, &mut w).await.unwrap();
            w.shutdown().await.unwrap();
        });
        let (mut stream, answer) = dial(&format!("tcp 127.0.0.1 {port}\n")).await;
        assert_eq!(answer, Ok(()));
        stream
            .get_mut()
            .write_all(b"hello through the guest")
            .await
            .unwrap();
        stream.get_mut().shutdown().await.unwrap();
        let mut echoed = String::new();
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut echoed))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(echoed, "hello through the guest");
    }

    #[tokio::test]
    async fn test_dial_tcp_refused_is_an_err_line() {
        // Bind and drop to find a port nobody listens on.
        let port = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let (_, answer) = dial(&format!("tcp 127.0.0.1 {port}\n")).await;
        match answer {
            Err(DialError::Refused(message)) => assert!(
                message.starts_with(&format!("connect tcp 127.0.0.1:{port}: ")),
                "{message}"
            ),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test]
    async fn test_dial_bad_header_is_an_err_line() {
        let (_, answer) = dial("sctp 127.0.0.1 80\n").await;
        assert!(matches!(answer, Err(DialError::Refused(m)) if m.contains("tcp|udp ADDRESS PORT")));
    }

    #[tokio::test]
    async fn test_dial_udp_frames_datagrams_both_ways() {
        let echo = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let port = echo.local_addr().unwrap().port();
        tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            loop {
                let (n, from) = echo.recv_from(&mut buf).await.unwrap();
                let mut reply = b"echo:".to_vec();
                reply.extend_from_slice(&buf[..n]);
                echo.send_to(&reply, from).await.unwrap();
            }
        });
        let (mut stream, answer) = dial(&format!("udp 127.0.0.1 {port}\n")).await;
        assert_eq!(answer, Ok(()));
        // Two datagrams in one write: framing must keep them apart.
        let mut out = frame_datagram(b"one").unwrap();
        out.extend(frame_datagram(b"").unwrap());
        stream.get_mut().write_all(&out).await.unwrap();
        let mut replies = Vec::new();
        for _ in 0..2 {
            let mut len = [0u8; 2];
            tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut len))
                .await
                .unwrap()
                .unwrap();
            let mut payload = vec![0u8; usize::from(u16::from_be_bytes(len))];
            stream.read_exact(&mut payload).await.unwrap();
            replies.push(String::from_utf8(payload).unwrap());
        }
        replies.sort();
        assert_eq!(replies, ["echo:", "echo:one"]);
        // Closing the stream ends the session: the agent closes its side.
        stream.get_mut().shutdown().await.unwrap();
        let mut rest = Vec::new();
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut rest))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(n, 0);
    }
}
