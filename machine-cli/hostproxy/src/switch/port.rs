//! One port: the task that reads frames from a connection and hands them to the
//! forwarding path, and writes the frames queued for the port back to it.

use std::fmt;

use serde::Serialize;
use tokio::io::{AsyncWriteExt, BufReader, BufWriter};
use tokio::net::UnixStream;
use tokio::sync::mpsc;

use super::frame::{self, Frame, FrameError, LEN_PREFIX};
use super::server::Shared;
use super::stats::PortCounters;

/// Read buffer of a port: room for several large frames per system call.
const READ_BUF: usize = 256 * 1024;
/// Write buffer of a port.
const WRITE_BUF: usize = 256 * 1024;
/// Most frames written between two flushes.
const WRITE_BATCH: usize = 64;

/// A port's number, unique for the life of a switch (never reused).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct PortId(pub u64);

impl fmt::Display for PortId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Why a port closed.
#[derive(Debug)]
pub enum PortEnd {
    /// The peer closed the connection between frames.
    PeerClosed,
    /// The peer's input was not frames, or could not be read.
    Input(FrameError),
    /// Writing to the peer failed.
    Output(std::io::Error),
    /// The switch is shutting down (or dropped the port).
    Stopped,
}

/// Runs the port until it closes.
pub async fn serve(
    shared: &Shared,
    id: PortId,
    stream: UnixStream,
    mut queue: mpsc::Receiver<Frame>,
    counters: &PortCounters,
) -> PortEnd {
    let (read_half, write_half) = stream.into_split();
    let mut reader = BufReader::with_capacity(READ_BUF, read_half);
    let mut writer = BufWriter::with_capacity(WRITE_BUF, write_half);
    let max_frame_len = shared.options().max_frame_len;
    let input = async {
        loop {
            match frame::read_frame(&mut reader, max_frame_len).await {
                Ok(Some(frame)) => {
                    counters.count_in(frame.len() - LEN_PREFIX);
                    shared.forward(id, frame);
                }
                Ok(None) => return PortEnd::PeerClosed,
                Err(e) => return PortEnd::Input(e),
            }
        }
    };
    let output = async {
        while let Some(first) = queue.recv().await {
            let mut frames = 0u64;
            let mut bytes = 0u64;
            let mut next = Some(first);
            // Write what is queued now, then flush once.
            while let Some(frame) = next.take() {
                if let Err(e) = writer.write_all(&frame).await {
                    return PortEnd::Output(e);
                }
                frames += 1;
                bytes += (frame.len() - LEN_PREFIX) as u64;
                if frames < WRITE_BATCH as u64 {
                    next = queue.try_recv().ok();
                }
            }
            if let Err(e) = writer.flush().await {
                return PortEnd::Output(e);
            }
            counters.count_out(frames, bytes);
        }
        PortEnd::Stopped
    };
    tokio::select! {
        end = input => end,
        end = output => end,
        () = shared.stopped() => PortEnd::Stopped,
    }
}
