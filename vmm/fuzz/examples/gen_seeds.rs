//! Writes the seed inputs under `seeds/<target>/`: small, valid driver sessions for each
//! target, so fuzzing starts from requests the devices accept. Each seed is then run once and
//! the device's counters are printed, to check that it does what its name says.
//!
//! `cargo +nightly run --example gen_seeds` (in `vmm/fuzz`), then commit `seeds/`.

use std::path::Path;

use fuzz_harness::{targets, SeedBuilder};

/// Named seeds of one target.
type Seeds = Vec<(&'static str, Vec<u8>)>;

/// A little-endian virtio-blk request header.
fn blk_header(request_type: u32, sector: u64) -> Vec<u8> {
    let mut h = request_type.to_le_bytes().to_vec();
    h.extend_from_slice(&0u32.to_le_bytes());
    h.extend_from_slice(&sector.to_le_bytes());
    h
}

/// A discard/write-zeroes segment.
fn blk_segment(sector: u64, num_sectors: u32, flags: u32) -> Vec<u8> {
    let mut s = sector.to_le_bytes().to_vec();
    s.extend_from_slice(&num_sectors.to_le_bytes());
    s.extend_from_slice(&flags.to_le_bytes());
    s
}

/// virtio-blk seeds: a setup byte (read-only bit), then the driver session.
fn blk() -> Seeds {
    let with = |read_only: u8, b: SeedBuilder| {
        let mut v = vec![read_only];
        v.extend(b.build());
        v
    };
    let write_read = SeedBuilder::new(1)
        .data(0x0, &blk_header(1, 2))
        .data(0x100, &[0xab; 512])
        .chain(
            0,
            &[(0x0, 16, false), (0x100, 512, false), (0x1000, 1, true)],
        )
        .notify(0)
        .data(0x20, &blk_header(0, 2))
        .chain(
            0,
            &[(0x20, 16, false), (0x400, 512, true), (0x1001, 1, true)],
        )
        .notify(0);
    let misc = SeedBuilder::new(1)
        .data(0x0, &blk_header(4, 0))
        .data(0x20, &blk_header(8, 0))
        .data(0x40, &blk_header(99, 0))
        .chain(0, &[(0x0, 16, false), (0x1000, 1, true)])
        .chain(
            0,
            &[(0x20, 16, false), (0x400, 20, true), (0x1001, 1, true)],
        )
        .chain(0, &[(0x40, 16, false), (0x1002, 1, true)])
        .notify(0);
    let mut discard = blk_header(11, 0);
    discard.extend(blk_segment(0, 8, 0));
    let mut zeroes = blk_header(13, 0);
    zeroes.extend(blk_segment(16, 8, 1));
    let discard = SeedBuilder::new(1)
        .data(0x0, &discard)
        .data(0x40, &zeroes)
        .chain(0, &[(0x0, 32, false), (0x1000, 1, true)])
        .chain(0, &[(0x40, 32, false), (0x1001, 1, true)])
        .notify(0);
    // Header split over two descriptors, data over three.
    let split = SeedBuilder::new(1)
        .data(0x0, &blk_header(1, 4)[..8])
        .data(0x80, &blk_header(1, 4)[8..])
        .chain(
            0,
            &[
                (0x0, 8, false),
                (0x80, 8, false),
                (0x200, 100, false),
                (0x300, 412, false),
                (0x1000, 1, true),
            ],
        )
        .notify(0);
    let read_only = SeedBuilder::new(1)
        .data(0x0, &blk_header(1, 0))
        .chain(
            0,
            &[(0x0, 16, false), (0x100, 512, false), (0x1000, 1, true)],
        )
        .notify(0);
    vec![
        ("write_read", with(0, write_read)),
        ("flush_get_id_unsupported", with(0, misc)),
        ("discard_write_zeroes", with(0, discard)),
        ("split_write", with(0, split)),
        ("read_only_write", with(1, read_only)),
    ]
}

/// A vsock packet header from the guest (CID 3) to the host.
fn vsock_header(src_port: u32, dst_port: u32, op: u16, len: u32, flags: u32) -> Vec<u8> {
    let mut h = 3u64.to_le_bytes().to_vec();
    h.extend_from_slice(&2u64.to_le_bytes());
    h.extend_from_slice(&src_port.to_le_bytes());
    h.extend_from_slice(&dst_port.to_le_bytes());
    h.extend_from_slice(&len.to_le_bytes());
    h.extend_from_slice(&1u16.to_le_bytes()); // stream
    h.extend_from_slice(&op.to_le_bytes());
    h.extend_from_slice(&flags.to_le_bytes());
    h.extend_from_slice(&(64 * 1024u32).to_le_bytes()); // buf_alloc
    h.extend_from_slice(&0u32.to_le_bytes()); // fwd_cnt
    h
}

/// Posts `n` rx buffers of 44 + 1024 bytes on the vsock rx queue.
fn vsock_rx_buffers(mut b: SeedBuilder, n: u16) -> SeedBuilder {
    for i in 0..n {
        b = b.chain(0, &[(0x8000 + i * 0x500, 44 + 1024, true)]);
    }
    b.notify(0)
}

fn vsock() -> Seeds {
    const OP_REQUEST: u16 = 1;
    const OP_RESPONSE: u16 = 2;
    const OP_RST: u16 = 3;
    const OP_SHUTDOWN: u16 = 4;
    const OP_RW: u16 = 5;
    const OP_CREDIT_REQUEST: u16 = 7;
    const HOST_PORT: u32 = 1 << 30;
    // Guest connects to the host service on port 52, exchanges data, shuts down.
    let mut rw = vsock_header(1000, 52, OP_RW, 4, 0);
    rw.extend_from_slice(b"ping");
    let guest = vsock_rx_buffers(SeedBuilder::new(3), 4)
        .data(0x0, &vsock_header(1000, 52, OP_REQUEST, 0, 0))
        .chain(1, &[(0x0, 44, false)])
        .notify(1)
        .device(1, &[0, 4, b'p', b'o', b'n', b'g'])
        .data(0x100, &rw)
        .chain(1, &[(0x100, 20, false), (0x114, 28, false)])
        .notify(1)
        .device(2, &[0])
        .data(0x200, &vsock_header(1000, 52, OP_CREDIT_REQUEST, 0, 0))
        .data(0x300, &vsock_header(1000, 52, OP_SHUTDOWN, 0, 3))
        .chain(1, &[(0x200, 44, false)])
        .chain(1, &[(0x300, 44, false)])
        .notify(1);
    // A host process connects to guest port 1234; the guest accepts; data both ways; RST.
    let mut rw = vsock_header(1234, HOST_PORT, OP_RW, 5, 0);
    rw.extend_from_slice(b"hello");
    let mut connect = vec![0u8];
    connect.extend_from_slice(&1234u32.to_le_bytes());
    let host = vsock_rx_buffers(SeedBuilder::new(3), 4)
        .device(0, &connect)
        .data(0x0, &vsock_header(1234, HOST_PORT, OP_RESPONSE, 0, 0))
        .chain(1, &[(0x0, 44, false)])
        .notify(1)
        .device(1, &[0, 3, b'a', b'b', b'c'])
        .data(0x100, &rw)
        .chain(1, &[(0x100, 49, false)])
        .notify(1)
        .device(2, &[0])
        .data(0x200, &vsock_header(1234, HOST_PORT, OP_RST, 0, 0))
        .chain(1, &[(0x200, 44, false)])
        .notify(1);
    // A bad CONNECT line, a refused guest connection, a packet too short and a wrong CID.
    let mut bad_line = vec![1u8, 9];
    bad_line.extend_from_slice(b"HELLO 52\n");
    let mut wrong_cid = vsock_header(1, 2, OP_REQUEST, 0, 0);
    wrong_cid[0] = 7;
    let bad = vsock_rx_buffers(SeedBuilder::new(3), 2)
        .device(0, &bad_line)
        .data(0x0, &vsock_header(1001, 99, OP_REQUEST, 0, 0))
        .data(0x100, &wrong_cid)
        .chain(1, &[(0x0, 44, false)])
        .chain(1, &[(0x100, 30, false)])
        .chain(1, &[(0x100, 44, false)])
        .notify(1);
    vec![
        ("guest_connects", guest.build()),
        ("host_connects", host.build()),
        ("bad_packets", bad.build()),
    ]
}

/// A net transmit buffer: a plain header and a 60-byte frame.
fn net_tx(flags: u8, gso_type: u8, frame_len: usize) -> Vec<u8> {
    let mut b = vec![0u8; 12];
    b[0] = flags;
    b[1] = gso_type;
    let mut frame = vec![0xffu8; 6];
    frame.extend_from_slice(&[2, 0, 0, 0, 0, 1, 0x08, 0x00]);
    frame.resize(frame_len, 0x45);
    b.extend(frame);
    b
}

/// A peer frame command: `len` bytes behind their length prefix.
fn net_peer_frame(len: u16) -> Vec<u8> {
    let mut c = vec![0u8];
    c.extend_from_slice(&len.to_le_bytes());
    let head = [
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 2, 0, 0, 0, 0, 9, 0x08, 0x00,
    ];
    c.push(head.len() as u8);
    c.extend_from_slice(&head);
    c
}

fn net() -> Seeds {
    const MRG_RXBUF: u32 = 1 << 15;
    let tx = SeedBuilder::new(2)
        .data(0x0, &net_tx(0, 0, 60))
        .chain(1, &[(0x0, 12, false), (0x0c, 30, false), (0x2a, 30, false)])
        .notify(1)
        .device(2, &[]);
    let bad_tx = SeedBuilder::new(2)
        .data(0x0, &net_tx(1, 0, 60))
        .data(0x100, &net_tx(0, 4, 60))
        .chain(1, &[(0x0, 72, false)])
        .chain(1, &[(0x100, 72, false)])
        .chain(1, &[(0x0, 20, false)])
        .chain(1, &[(0x0, 40000, false), (0x0, 40000, false)])
        .chain(1, &[(0x0, 72, false), (0x200, 16, true)])
        .notify(1);
    let mut rx = SeedBuilder::new(2);
    for i in 0..2 {
        rx = rx.chain(0, &[(0x1000 + i * 0x800, 1526, true)]);
    }
    let rx = rx
        .notify(0)
        .device(0, &net_peer_frame(60))
        .device(0, &net_peer_frame(1514));
    let mut rx_mrg = SeedBuilder::new(2);
    for i in 0..8 {
        rx_mrg = rx_mrg.chain(
            0,
            &[
                (0x1000 + i * 0x100, 128, true),
                (0x4000 + i * 0x100, 128, true),
            ],
        );
    }
    let rx_mrg = rx_mrg.notify(0).device(0, &net_peer_frame(1500));
    let mut rx_plain = SeedBuilder::with_setup(MRG_RXBUF, &[0, 0]);
    for i in 0..2 {
        rx_plain = rx_plain.chain(0, &[(0x1000 + i * 0x100, 256, true)]);
    }
    let rx_plain = rx_plain
        .notify(0)
        .device(0, &net_peer_frame(60))
        .device(0, &net_peer_frame(1000));
    vec![
        ("tx_frame", tx.build()),
        ("tx_bad_frames", bad_tx.build()),
        ("rx_frames", rx.build()),
        ("rx_merged_buffers", rx_mrg.build()),
        ("rx_without_mrg_rxbuf", rx_plain.build()),
    ]
}

fn main() -> std::io::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds");
    // The vsock target's sockets go to a directory removed at the end.
    let tmp = std::env::temp_dir().join(format!("rmfz-seeds-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;
    std::env::set_var("TMPDIR", &tmp);
    type Run = fn(&[u8]) -> String;
    let targets: [(&str, Seeds, Run); 3] = [
        ("blk_request", blk(), targets::blk_request::run),
        ("vsock_packet", vsock(), targets::vsock_packet::run),
        ("net_frame", net(), targets::net_frame::run),
    ];
    for (target, seeds, run) in targets {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir)?;
        for (name, bytes) in seeds {
            std::fs::write(dir.join(name), &bytes)?;
            println!("{target}/{name}: {} bytes: {}", bytes.len(), run(&bytes));
        }
    }
    std::fs::remove_dir_all(&tmp)
}
