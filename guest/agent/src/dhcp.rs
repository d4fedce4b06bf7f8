//! A small DHCPv4 client (RFC 2131): DISCOVER, OFFER, REQUEST, ACK, with the broadcast
//! flag set, because the interface has no address to receive unicast on yet.
//!
//! It sends from a UDP socket bound to port 68 on the interface (SO_BINDTODEVICE) with
//! SO_BROADCAST, which Linux allows before the interface has an address. The lease is not
//! renewed: the user-mode networks the guest runs behind (QEMU's slirp, passt) hand out
//! the same address for as long as the VM lives.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;
use tokio::time::Instant;
use tracing::{debug, info};

mod defs {
    //! RFC 2131 section 2 (message layout) and RFC 2132 (options).
    pub const OP_REQUEST: u8 = 1;
    pub const OP_REPLY: u8 = 2;
    pub const HTYPE_ETHERNET: u8 = 1;
    pub const FLAG_BROADCAST: u16 = 0x8000;
    pub const MAGIC_COOKIE: [u8; 4] = [99, 130, 83, 99];
    /// Fixed header before the magic cookie.
    pub const HEADER_LEN: usize = 236;
    /// BOOTP's minimum message size; some servers drop shorter ones.
    pub const MIN_LEN: usize = 300;

    pub const OPT_PAD: u8 = 0;
    pub const OPT_SUBNET_MASK: u8 = 1;
    pub const OPT_ROUTER: u8 = 3;
    pub const OPT_DNS: u8 = 6;
    pub const OPT_HOSTNAME: u8 = 12;
    pub const OPT_DOMAIN_NAME: u8 = 15;
    pub const OPT_MTU: u8 = 26;
    pub const OPT_BROADCAST: u8 = 28;
    pub const OPT_REQUESTED_IP: u8 = 50;
    pub const OPT_LEASE_TIME: u8 = 51;
    pub const OPT_MESSAGE_TYPE: u8 = 53;
    pub const OPT_SERVER_ID: u8 = 54;
    pub const OPT_PARAMETER_LIST: u8 = 55;
    pub const OPT_CLIENT_ID: u8 = 61;
    pub const OPT_END: u8 = 255;

    pub const CLIENT_PORT: u16 = 68;
    pub const SERVER_PORT: u16 = 67;
}

use defs::*;

/// DHCP message types (option 53).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageType {
    Discover = 1,
    Offer = 2,
    Request = 3,
    Decline = 4,
    Ack = 5,
    Nak = 6,
    Release = 7,
    Inform = 8,
}

impl MessageType {
    fn from_u8(value: u8) -> Option<MessageType> {
        use MessageType::*;
        [Discover, Offer, Request, Decline, Ack, Nak, Release, Inform]
            .into_iter()
            .find(|t| *t as u8 == value)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DhcpError {
    #[error("cannot open the DHCP socket on {iface}")]
    Socket {
        iface: String,
        #[source]
        source: std::io::Error,
    },
    #[error("DHCP send failed")]
    Send(#[source] std::io::Error),
    #[error("DHCP receive failed")]
    Receive(#[source] std::io::Error),
    #[error("no DHCP lease within {0:?}")]
    Timeout(Duration),
    #[error("not a DHCP reply: {0}")]
    Malformed(&'static str),
}

/// An address lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub address: Ipv4Addr,
    pub prefix_len: u8,
    pub router: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    pub domain: Option<String>,
    pub server: Option<Ipv4Addr>,
    pub lease_s: Option<u32>,
    pub mtu: Option<u16>,
}

/// A parsed server message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub xid: u32,
    pub message_type: MessageType,
    pub your_addr: Ipv4Addr,
    /// Options by code; repeated options are concatenated (RFC 3396).
    pub options: Vec<(u8, Vec<u8>)>,
}

impl Reply {
    fn option(&self, code: u8) -> Option<&[u8]> {
        self.options
            .iter()
            .find(|(c, _)| *c == code)
            .map(|(_, v)| v.as_slice())
    }

    fn addrs(&self, code: u8) -> Vec<Ipv4Addr> {
        self.option(code)
            .map(|v| {
                v.chunks_exact(4)
                    .map(|c| Ipv4Addr::new(c[0], c[1], c[2], c[3]))
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn server_id(&self) -> Option<Ipv4Addr> {
        self.addrs(OPT_SERVER_ID).first().copied()
    }

    /// The lease this reply (an ACK) grants.
    pub fn lease(&self) -> Lease {
        let prefix_len = self
            .addrs(OPT_SUBNET_MASK)
            .first()
            .and_then(|mask| prefix_of_mask(*mask))
            .unwrap_or(24);
        let be_u32 = |v: &[u8]| <[u8; 4]>::try_from(v).ok().map(u32::from_be_bytes);
        let be_u16 = |v: &[u8]| <[u8; 2]>::try_from(v).ok().map(u16::from_be_bytes);
        Lease {
            address: self.your_addr,
            prefix_len,
            router: self.addrs(OPT_ROUTER).first().copied(),
            dns: self.addrs(OPT_DNS),
            domain: self
                .option(OPT_DOMAIN_NAME)
                .map(|v| {
                    String::from_utf8_lossy(v)
                        .trim_end_matches('\0')
                        .to_string()
                })
                .filter(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_graphic())),
            server: self.server_id(),
            lease_s: self.option(OPT_LEASE_TIME).and_then(be_u32),
            mtu: self.option(OPT_MTU).and_then(be_u16).filter(|&m| m >= 576),
        }
    }
}

/// The prefix length of a contiguous netmask.
pub fn prefix_of_mask(mask: Ipv4Addr) -> Option<u8> {
    let bits = u32::from(mask);
    let len = bits.leading_ones();
    // Contiguous: no one bits after the leading ones.
    (bits.checked_shl(len).unwrap_or(0) == 0).then_some(len as u8)
}

/// What a client message asks for.
#[derive(Debug, Clone, Copy)]
pub enum ClientMessage {
    Discover,
    Request {
        requested: Ipv4Addr,
        server: Option<Ipv4Addr>,
    },
}

/// Encodes a client message.
pub fn build(message: ClientMessage, xid: u32, mac: [u8; 6], hostname: &str) -> Vec<u8> {
    let mut p = vec![0u8; HEADER_LEN];
    p[0] = OP_REQUEST;
    p[1] = HTYPE_ETHERNET;
    p[2] = 6; // hlen
    p[4..8].copy_from_slice(&xid.to_be_bytes());
    p[10..12].copy_from_slice(&FLAG_BROADCAST.to_be_bytes());
    p[28..34].copy_from_slice(&mac);
    p.extend_from_slice(&MAGIC_COOKIE);
    let mut option = |code: u8, value: &[u8]| {
        // Every value here is short: an address, a name capped at 64 bytes, a list.
        let len = u8::try_from(value.len()).unwrap_or(u8::MAX);
        p.push(code);
        p.push(len);
        p.extend_from_slice(&value[..usize::from(len)]);
    };
    match message {
        ClientMessage::Discover => option(OPT_MESSAGE_TYPE, &[MessageType::Discover as u8]),
        ClientMessage::Request { requested, server } => {
            option(OPT_MESSAGE_TYPE, &[MessageType::Request as u8]);
            option(OPT_REQUESTED_IP, &requested.octets());
            if let Some(server) = server {
                option(OPT_SERVER_ID, &server.octets());
            }
        }
    }
    let mut client_id = vec![HTYPE_ETHERNET];
    client_id.extend_from_slice(&mac);
    option(OPT_CLIENT_ID, &client_id);
    if !hostname.is_empty() {
        option(OPT_HOSTNAME, hostname.as_bytes());
    }
    option(
        OPT_PARAMETER_LIST,
        &[
            OPT_SUBNET_MASK,
            OPT_ROUTER,
            OPT_DNS,
            OPT_DOMAIN_NAME,
            OPT_MTU,
            OPT_BROADCAST,
            OPT_LEASE_TIME,
            OPT_SERVER_ID,
        ],
    );
    p.push(OPT_END);
    if p.len() < MIN_LEN {
        p.resize(MIN_LEN, OPT_PAD);
    }
    p
}

/// Decodes a server message for our `xid` and `mac`.
pub fn parse(packet: &[u8], xid: u32, mac: [u8; 6]) -> Result<Reply, DhcpError> {
    if packet.len() < HEADER_LEN + MAGIC_COOKIE.len() {
        return Err(DhcpError::Malformed("too short"));
    }
    if packet[0] != OP_REPLY {
        return Err(DhcpError::Malformed("not a reply"));
    }
    let got_xid = u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]);
    if got_xid != xid {
        return Err(DhcpError::Malformed("another transaction"));
    }
    if packet[28..34] != mac {
        return Err(DhcpError::Malformed("another client"));
    }
    if packet[HEADER_LEN..HEADER_LEN + 4] != MAGIC_COOKIE {
        return Err(DhcpError::Malformed("no magic cookie"));
    }
    let your_addr = Ipv4Addr::new(packet[16], packet[17], packet[18], packet[19]);
    let mut options: Vec<(u8, Vec<u8>)> = Vec::new();
    let mut rest = &packet[HEADER_LEN + 4..];
    while let Some((&code, tail)) = rest.split_first() {
        match code {
            OPT_PAD => rest = tail,
            OPT_END => break,
            _ => {
                let (&len, tail) = tail
                    .split_first()
                    .ok_or(DhcpError::Malformed("truncated option"))?;
                let len = usize::from(len);
                if tail.len() < len {
                    return Err(DhcpError::Malformed("truncated option"));
                }
                match options.iter_mut().find(|(c, _)| *c == code) {
                    Some((_, value)) => value.extend_from_slice(&tail[..len]),
                    None => options.push((code, tail[..len].to_vec())),
                }
                rest = &tail[len..];
            }
        }
    }
    let message_type = options
        .iter()
        .find(|(c, _)| *c == OPT_MESSAGE_TYPE)
        .and_then(|(_, v)| v.first().copied())
        .and_then(MessageType::from_u8)
        .ok_or(DhcpError::Malformed("no message type"))?;
    Ok(Reply {
        xid,
        message_type,
        your_addr,
        options,
    })
}

/// Opens the client socket on an interface: port 68, broadcast, bound to the device.
pub fn client_socket(iface: &str) -> Result<UdpSocket, DhcpError> {
    let err = |source| DhcpError::Socket {
        iface: iface.to_string(),
        source,
    };
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).map_err(err)?;
    socket.set_reuse_address(true).map_err(err)?;
    socket.set_broadcast(true).map_err(err)?;
    socket.bind_device(Some(iface.as_bytes())).map_err(err)?;
    socket
        .bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, CLIENT_PORT)).into())
        .map_err(err)?;
    socket.set_nonblocking(true).map_err(err)?;
    UdpSocket::from_std(socket.into()).map_err(err)
}

/// Where client messages go on a real network: the limited broadcast address.
pub fn broadcast_server() -> SocketAddr {
    SocketAddrV4::new(Ipv4Addr::BROADCAST, SERVER_PORT).into()
}

/// A transaction id that differs between boots and attempts.
fn new_xid(attempt: u32) -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() ^ (d.as_secs() as u32))
        .unwrap_or(0);
    nanos ^ std::process::id().rotate_left(16) ^ attempt.wrapping_mul(0x9E37_79B9)
}

/// How long to wait for an answer on each attempt: short first (the server is a local
/// process answering in microseconds, a lost first packet should cost little), longer
/// later.
fn attempt_timeout(attempt: u32) -> Duration {
    match attempt {
        0 => Duration::from_millis(250),
        1 => Duration::from_millis(500),
        2 => Duration::from_secs(1),
        _ => Duration::from_secs(2),
    }
}

/// Waits for a reply of one of `types` to `xid`, ignoring everything else, until `until`.
async fn receive(
    socket: &UdpSocket,
    xid: u32,
    mac: [u8; 6],
    types: &[MessageType],
    until: Instant,
) -> Result<Option<Reply>, DhcpError> {
    let mut buf = [0u8; 1500];
    loop {
        let received = tokio::time::timeout_at(until, socket.recv_from(&mut buf)).await;
        let (n, from) = match received {
            Err(_) => return Ok(None),
            Ok(Ok(got)) => got,
            Ok(Err(e)) => return Err(DhcpError::Receive(e)),
        };
        match parse(&buf[..n], xid, mac) {
            Ok(reply) if types.contains(&reply.message_type) => return Ok(Some(reply)),
            Ok(reply) => debug!(%from, kind = ?reply.message_type, "ignoring DHCP message"),
            Err(e) => debug!(%from, error = %e, "ignoring packet"),
        }
    }
}

/// Runs DISCOVER/OFFER/REQUEST/ACK against `server` until a lease is acknowledged or
/// `total` has passed. A DISCOVER is retransmitted with the same transaction id, so an
/// OFFER that comes late (a server probing the address with ARP first) still counts; a
/// NAK or a lost ACK starts over with a new transaction.
pub async fn acquire(
    socket: &UdpSocket,
    server: SocketAddr,
    mac: [u8; 6],
    hostname: &str,
    total: Duration,
) -> Result<Lease, DhcpError> {
    let started = Instant::now();
    let deadline = started + total;
    let mut attempt = 0u32;
    let mut xid = new_xid(attempt);
    while Instant::now() < deadline {
        let wait = attempt_timeout(attempt);
        attempt += 1;
        let discover = build(ClientMessage::Discover, xid, mac, hostname);
        socket
            .send_to(&discover, server)
            .await
            .map_err(DhcpError::Send)?;
        debug!(attempt, "DHCPDISCOVER sent");
        let until = (Instant::now() + wait).min(deadline);
        let Some(offer) = receive(socket, xid, mac, &[MessageType::Offer], until).await? else {
            continue;
        };
        debug!(address = %offer.your_addr, "DHCPOFFER received");
        let request = ClientMessage::Request {
            requested: offer.your_addr,
            server: offer.server_id(),
        };
        socket
            .send_to(&build(request, xid, mac, hostname), server)
            .await
            .map_err(DhcpError::Send)?;
        let until = (Instant::now() + wait).min(deadline);
        match receive(
            socket,
            xid,
            mac,
            &[MessageType::Ack, MessageType::Nak],
            until,
        )
        .await?
        {
            Some(reply) if reply.message_type == MessageType::Ack => {
                let lease = reply.lease();
                info!(
                    address = %lease.address,
                    prefix_len = lease.prefix_len,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "DHCP lease acquired"
                );
                return Ok(lease);
            }
            Some(_) => debug!("DHCPNAK received; starting over"),
            None => debug!("no DHCPACK; starting over"),
        }
        xid = new_xid(attempt);
    }
    Err(DhcpError::Timeout(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

    /// The server side of the tests: a reply like QEMU's slirp sends.
    fn server_reply(request: &[u8], message_type: MessageType, options: &[(u8, &[u8])]) -> Vec<u8> {
        let mut p = vec![0u8; HEADER_LEN];
        p[0] = OP_REPLY;
        p[1] = HTYPE_ETHERNET;
        p[2] = 6;
        p[4..8].copy_from_slice(&request[4..8]);
        p[10..12].copy_from_slice(&request[10..12]);
        p[16..20].copy_from_slice(&[10, 0, 2, 15]);
        p[28..34].copy_from_slice(&request[28..34]);
        p.extend_from_slice(&MAGIC_COOKIE);
        p.extend_from_slice(&[OPT_MESSAGE_TYPE, 1, message_type as u8]);
        for (code, value) in options {
            p.push(*code);
            p.push(value.len() as u8);
            p.extend_from_slice(value);
        }
        p.push(OPT_END);
        p
    }

    fn slirp_options() -> Vec<(u8, &'static [u8])> {
        vec![
            (OPT_SERVER_ID, &[10, 0, 2, 2]),
            (OPT_SUBNET_MASK, &[255, 255, 255, 0]),
            (OPT_ROUTER, &[10, 0, 2, 2]),
            (OPT_DNS, &[10, 0, 2, 3]),
            (OPT_LEASE_TIME, &[0, 1, 0x51, 0x80]),
        ]
    }

    /// Options of a client message, by code.
    fn client_options(packet: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut reply = packet.to_vec();
        reply[0] = OP_REPLY;
        let xid = u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]);
        parse(&reply, xid, MAC).unwrap().options
    }

    #[test]
    fn test_discover_layout() {
        let p = build(ClientMessage::Discover, 0xdead_beef, MAC, "rmachine");
        assert_eq!(p.len(), MIN_LEN);
        assert_eq!((p[0], p[1], p[2]), (OP_REQUEST, HTYPE_ETHERNET, 6));
        assert_eq!(&p[4..8], &[0xde, 0xad, 0xbe, 0xef]);
        assert_eq!(&p[10..12], &[0x80, 0x00], "broadcast flag");
        assert_eq!(&p[28..34], &MAC);
        assert_eq!(&p[236..240], &MAGIC_COOKIE);
        let options = client_options(&p);
        assert_eq!(options[0], (OPT_MESSAGE_TYPE, vec![1]));
        assert!(options.contains(&(OPT_HOSTNAME, b"rmachine".to_vec())));
        assert!(options
            .iter()
            .any(|(c, v)| *c == OPT_PARAMETER_LIST && v.contains(&OPT_DNS)));
    }

    #[test]
    fn test_request_names_the_offer() {
        let request = ClientMessage::Request {
            requested: Ipv4Addr::new(10, 0, 2, 15),
            server: Some(Ipv4Addr::new(10, 0, 2, 2)),
        };
        let options = client_options(&build(request, 1, MAC, ""));
        assert_eq!(options[0], (OPT_MESSAGE_TYPE, vec![3]));
        assert!(options.contains(&(OPT_REQUESTED_IP, vec![10, 0, 2, 15])));
        assert!(options.contains(&(OPT_SERVER_ID, vec![10, 0, 2, 2])));
        assert!(!options.iter().any(|(c, _)| *c == OPT_HOSTNAME));
    }

    #[test]
    fn test_ack_parses_into_a_lease() {
        let request = build(ClientMessage::Discover, 42, MAC, "h");
        let mut options = slirp_options();
        options.push((OPT_DNS, &[1, 1, 1, 1])); // a repeated option is appended
        options.push((OPT_DOMAIN_NAME, b"example.internal"));
        options.push((OPT_MTU, &[0xff, 0xf0]));
        let reply = parse(&server_reply(&request, MessageType::Ack, &options), 42, MAC).unwrap();
        assert_eq!(reply.message_type, MessageType::Ack);
        let lease = reply.lease();
        assert_eq!(
            lease,
            Lease {
                address: Ipv4Addr::new(10, 0, 2, 15),
                prefix_len: 24,
                router: Some(Ipv4Addr::new(10, 0, 2, 2)),
                dns: vec![Ipv4Addr::new(10, 0, 2, 3), Ipv4Addr::new(1, 1, 1, 1)],
                domain: Some("example.internal".into()),
                server: Some(Ipv4Addr::new(10, 0, 2, 2)),
                lease_s: Some(86_400),
                mtu: Some(65_520),
            }
        );
    }

    #[test]
    fn test_foreign_and_broken_replies_are_rejected() {
        let request = build(ClientMessage::Discover, 42, MAC, "h");
        let reply = server_reply(&request, MessageType::Offer, &slirp_options());
        assert!(matches!(
            parse(&reply, 43, MAC),
            Err(DhcpError::Malformed("another transaction"))
        ));
        assert!(matches!(
            parse(&reply, 42, [0; 6]),
            Err(DhcpError::Malformed("another client"))
        ));
        assert!(matches!(
            parse(&request, 42, MAC),
            Err(DhcpError::Malformed("not a reply"))
        ));
        assert!(matches!(
            parse(&reply[..100], 42, MAC),
            Err(DhcpError::Malformed("too short"))
        ));
        let mut truncated = reply.clone();
        truncated.truncate(HEADER_LEN + 4 + 3 + 2); // message type, then half an option
        assert!(matches!(
            parse(&truncated, 42, MAC),
            Err(DhcpError::Malformed("truncated option"))
        ));
    }

    #[test]
    fn test_prefix_of_mask() {
        assert_eq!(prefix_of_mask(Ipv4Addr::new(255, 255, 255, 0)), Some(24));
        assert_eq!(prefix_of_mask(Ipv4Addr::new(255, 255, 240, 0)), Some(20));
        assert_eq!(prefix_of_mask(Ipv4Addr::new(255, 255, 255, 255)), Some(32));
        assert_eq!(prefix_of_mask(Ipv4Addr::new(0, 0, 0, 0)), Some(0));
        assert_eq!(prefix_of_mask(Ipv4Addr::new(255, 0, 255, 0)), None);
    }

    /// A fake server on loopback: drops the first DISCOVER, NAKs the first REQUEST, then
    /// offers and acknowledges.
    async fn fake_server(socket: UdpSocket) {
        let mut buf = [0u8; 1500];
        let (mut discovers, mut requests) = (0, 0);
        loop {
            let (n, from) = socket.recv_from(&mut buf).await.unwrap();
            let packet = &buf[..n];
            let kind = client_options(packet)[0].1[0];
            let reply = if kind == MessageType::Discover as u8 {
                discovers += 1;
                if discovers == 1 {
                    continue;
                }
                server_reply(packet, MessageType::Offer, &slirp_options())
            } else {
                requests += 1;
                let kind = if requests == 1 {
                    MessageType::Nak
                } else {
                    MessageType::Ack
                };
                server_reply(packet, kind, &slirp_options())
            };
            socket.send_to(&reply, from).await.unwrap();
        }
    }

    #[tokio::test]
    async fn test_acquire_retries_through_loss_and_nak() {
        let server = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let server_addr = server.local_addr().unwrap();
        tokio::spawn(fake_server(server));
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let lease = acquire(
            &client,
            server_addr,
            MAC,
            "rmachine",
            Duration::from_secs(10),
        )
        .await
        .unwrap();
        assert_eq!(lease.address, Ipv4Addr::new(10, 0, 2, 15));
        assert_eq!(lease.router, Some(Ipv4Addr::new(10, 0, 2, 2)));
    }

    #[tokio::test]
    async fn test_acquire_accepts_a_late_offer_for_a_retransmitted_discover() {
        // Like busybox udhcpd probing the address with ARP: the OFFER to the first
        // DISCOVER comes after the client has retransmitted; later DISCOVERs go unanswered.
        let server = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let server_addr = server.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = [0u8; 1500];
            let mut offered = false;
            loop {
                let (n, from) = server.recv_from(&mut buf).await.unwrap();
                let packet = buf[..n].to_vec();
                let kind = client_options(&packet)[0].1[0];
                if kind == MessageType::Discover as u8 && !offered {
                    offered = true;
                    tokio::time::sleep(Duration::from_millis(400)).await;
                    server
                        .send_to(
                            &server_reply(&packet, MessageType::Offer, &slirp_options()),
                            from,
                        )
                        .await
                        .unwrap();
                } else if kind == MessageType::Request as u8 {
                    server
                        .send_to(
                            &server_reply(&packet, MessageType::Ack, &slirp_options()),
                            from,
                        )
                        .await
                        .unwrap();
                }
            }
        });
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let started = std::time::Instant::now();
        let lease = acquire(&client, server_addr, MAC, "", Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(lease.address, Ipv4Addr::new(10, 0, 2, 15));
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn test_acquire_gives_up_after_the_total_timeout() {
        // A server that never answers.
        let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let started = std::time::Instant::now();
        let err = acquire(
            &client,
            silent.local_addr().unwrap(),
            MAC,
            "",
            Duration::from_millis(600),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, DhcpError::Timeout(_)), "{err}");
        let elapsed = started.elapsed();
        assert!(
            elapsed >= Duration::from_millis(600) && elapsed < Duration::from_secs(3),
            "{elapsed:?}"
        );
    }
}
