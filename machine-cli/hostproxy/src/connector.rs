//! "Connect to guest service S", as this crate needs it: a trait that the machine's
//! [`Carrier`] implements and tests replace with a fake guest, plus the dial service's
//! header exchange on top of it ([`dial`]).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::time::Duration;

use rmachine_machine::guest_link::{Carrier, LinkError, CONNECT_DEADLINE};
use rmachine_protocol::dial::{self, DialError, DialRequest};
use rmachine_protocol::line::{read_line_limited, Line, MAX_HEADER_LINE};
use rmachine_protocol::Service;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};

/// How long a dial's header exchange (the request and the agent's answer) may take, once
/// connected (the connect has its own deadline, [`CONNECT_DEADLINE`]).
const DIAL_TIMEOUT: Duration = Duration::from_secs(10);

/// A byte stream to a guest service, already greeted.
pub trait GuestIo: AsyncRead + AsyncWrite + Send + Unpin {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin> GuestIo for T {}

/// The future returned by [`GuestConnector::connect`].
pub type ConnectFuture<'a> =
    Pin<Box<dyn Future<Output = io::Result<Box<dyn GuestIo>>> + Send + 'a>>;

/// Opens greeted streams to guest services.
pub trait GuestConnector: Send + Sync + 'static {
    /// Connects to `service` and completes the hello exchange.
    fn connect(&self, service: Service) -> ConnectFuture<'_>;
}

impl GuestConnector for Carrier {
    fn connect(&self, service: Service) -> ConnectFuture<'_> {
        Box::pin(async move {
            match Carrier::connect(self, service).await {
                Ok(stream) => Ok(Box::new(stream) as Box<dyn GuestIo>),
                Err(err) => {
                    let kind = match &err {
                        LinkError::Connect { source, .. } | LinkError::Io(source) => source.kind(),
                        LinkError::Timeout(_) | LinkError::Busy => io::ErrorKind::TimedOut,
                        LinkError::Closed(_) => io::ErrorKind::UnexpectedEof,
                        _ => io::ErrorKind::ConnectionRefused,
                    };
                    Err(io::Error::new(kind, err))
                }
            }
        })
    }
}

/// A dialed guest address: the agent's answer is consumed, the rest is the connection
/// (tcp bytes, or framed udp datagrams). The buffer keeps whatever the guest sent right
/// after its answer.
pub type DialedStream = BufReader<Box<dyn GuestIo>>;

/// Why a dial through the guest failed.
#[derive(Debug, thiserror::Error)]
pub enum GuestDialError {
    #[error("cannot reach the guest's dial service")]
    Connect(#[source] io::Error),
    #[error("i/o during the dial header exchange")]
    Io(#[from] io::Error),
    #[error("guest closed the dial stream before answering")]
    Closed,
    #[error("guest's dial answer is too long")]
    TooLong,
    #[error("guest refused the dial")]
    Refused(#[source] DialError),
    #[error("timed out after {DIAL_TIMEOUT:?} dialing through the guest")]
    Timeout,
}

/// Dials `request` inside the guest through the dial service.
pub async fn dial(
    connector: &dyn GuestConnector,
    request: &DialRequest,
) -> Result<DialedStream, GuestDialError> {
    let stream = tokio::time::timeout(CONNECT_DEADLINE, connector.connect(Service::Dial))
        .await
        .map_err(|_| GuestDialError::Timeout)?
        .map_err(GuestDialError::Connect)?;
    tokio::time::timeout(DIAL_TIMEOUT, exchange(stream, request))
        .await
        .map_err(|_| GuestDialError::Timeout)?
}

async fn exchange(
    stream: Box<dyn GuestIo>,
    request: &DialRequest,
) -> Result<DialedStream, GuestDialError> {
    let mut stream = BufReader::new(stream);
    stream
        .get_mut()
        .write_all(request.encode().as_bytes())
        .await?;
    match read_line_limited(&mut stream, MAX_HEADER_LINE).await? {
        Line::Data(answer) => dial::parse_answer(&answer).map_err(GuestDialError::Refused)?,
        Line::TooLong { .. } => return Err(GuestDialError::TooLong),
        Line::Eof => return Err(GuestDialError::Closed),
    }
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rmachine_protocol::dial::Proto;
    use rmachine_protocol::hello;
    use std::collections::BTreeMap;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    /// A fake agent behind a TCP carrier: checks the hello and the dial header, answers
    /// `answer`, then sends `after`.
    async fn fake_dial_agent(
        answer: &'static str,
        after: &'static [u8],
    ) -> (Carrier, tokio::task::JoinHandle<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            let mut s = BufReader::new(s);
            let Line::Data(h) = read_line_limited(&mut s, MAX_HEADER_LINE).await.unwrap() else {
                panic!("no hello")
            };
            assert_eq!(hello::parse_hello(&h).unwrap().service, Service::Dial);
            s.get_mut()
                .write_all(hello::format_ok().as_bytes())
                .await
                .unwrap();
            let Line::Data(header) = read_line_limited(&mut s, MAX_HEADER_LINE).await.unwrap()
            else {
                panic!("no header")
            };
            s.get_mut().write_all(answer.as_bytes()).await.unwrap();
            s.get_mut().write_all(after).await.unwrap();
            header
        });
        let carrier = Carrier::Tcp {
            ports: BTreeMap::from([(Service::Dial.port(), addr)]),
            token: "t".into(),
        };
        (carrier, task)
    }

    fn request() -> DialRequest {
        DialRequest {
            proto: Proto::Tcp,
            guest_addr: "127.0.0.1".parse().unwrap(),
            guest_port: 8080,
        }
    }

    #[tokio::test]
    async fn test_dial_through_carrier_keeps_bytes_after_the_answer() {
        let (carrier, task) = fake_dial_agent("OK\n", b"banner").await;
        let mut stream = dial(&carrier, &request()).await.unwrap();
        let mut buf = [0u8; 6];
        stream.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"banner");
        assert_eq!(task.await.unwrap(), b"tcp 127.0.0.1 8080");
    }

    #[tokio::test]
    async fn test_dial_refusal_is_an_error() {
        let (carrier, _task) = fake_dial_agent("ERR connection refused\n", b"").await;
        let err = dial(&carrier, &request()).await.err().unwrap();
        assert!(
            matches!(&err, GuestDialError::Refused(DialError::Refused(m)) if m == "connection refused"),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn test_unreachable_carrier_keeps_the_error_kind() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let carrier = Carrier::Tcp {
            ports: BTreeMap::from([(Service::Dial.port(), addr)]),
            token: "t".into(),
        };
        let err = GuestConnector::connect(&carrier, Service::Dial)
            .await
            .err()
            .unwrap();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);
    }
}
