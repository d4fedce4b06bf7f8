//! A benchmark of the forwarding path: one port sends a given number of bytes of
//! unicast frames to another through a switch that runs alone on its own thread (a
//! current-thread tokio runtime), and the switch thread's CPU time is measured.
//!
//! The sender keeps at most half a queue of frames in flight, so no frame is dropped and
//! the time measured is that of forwarding, not of losing frames.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::frame::{self, LEN_PREFIX, MIN_FRAME_LEN};
use super::mac_table::MacAddr;
use super::{Switch, SwitchError, SwitchOptions, SwitchStats};

const SENDER: MacAddr = MacAddr([0x52, 0x54, 0x00, 0xbe, 0x00, 0x01]);
const RECEIVER: MacAddr = MacAddr([0x52, 0x54, 0x00, 0xbe, 0x00, 0x02]);
/// An EtherType for local experiments (IEEE 802 local experimental 1).
const ETHERTYPE: [u8; 2] = [0x88, 0xb5];
/// How long the receiver waits for more bytes before it gives up.
const STALL_TIMEOUT: Duration = Duration::from_secs(10);

/// What a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// Ethernet frame bytes that reached the receiving port (prefixes not counted).
    pub bytes: u64,
    pub frames: u64,
    /// Bytes per frame, Ethernet header included.
    pub frame_len: usize,
    pub wall: Duration,
    /// CPU time (user + system) of the switch's thread; `None` where the OS does not
    /// report a thread's CPU time (only Linux does here).
    pub switch_cpu: Option<Duration>,
    /// The switch's counters at the end.
    pub stats: SwitchStats,
}

impl BenchReport {
    /// Throughput in Gbit/s of Ethernet frame bytes.
    pub fn gbit_per_s(&self) -> f64 {
        self.bytes as f64 * 8.0 / self.wall.as_secs_f64().max(1e-9) / 1e9
    }

    /// Switch CPU time per GiB forwarded.
    pub fn cpu_per_gib(&self) -> Option<Duration> {
        let gib = self.bytes as f64 / f64::from(1u32 << 30);
        self.switch_cpu
            .filter(|_| gib > 0.0)
            .map(|cpu| Duration::from_secs_f64(cpu.as_secs_f64() / gib))
    }
}

/// Forwards `total_bytes` (rounded up to whole frames) of `frame_len`-byte frames from
/// one port to another and reports the time and the switch's CPU time. Blocking: call
/// it outside an async runtime.
pub fn forward(total_bytes: u64, frame_len: usize) -> Result<BenchReport, SwitchError> {
    let options = SwitchOptions::default();
    if !(MIN_FRAME_LEN..=options.max_frame_len).contains(&frame_len) {
        return Err(SwitchError::Options(format!(
            "frame_len must be within {MIN_FRAME_LEN}..={}",
            options.max_frame_len
        )));
    }
    let window_bytes = (options.queue_frames / 2) as u64 * (LEN_PREFIX + frame_len) as u64;
    let switch = Switch::new(options)?;
    let (mut sender, sender_port) = UnixStream::pair().map_err(SwitchError::Bench)?;
    let (mut receiver, receiver_port) = UnixStream::pair().map_err(SwitchError::Bench)?;

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let switch_thread = {
        let switch = switch.clone();
        std::thread::Builder::new()
            .name("switch-bench".into())
            .spawn(move || -> Result<Option<Duration>, SwitchError> {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(SwitchError::Bench)?;
                runtime.block_on(async move {
                    let cpu_start = cpu_time::thread();
                    for port in [sender_port, receiver_port] {
                        port.set_nonblocking(true).map_err(SwitchError::Bench)?;
                        let port =
                            tokio::net::UnixStream::from_std(port).map_err(SwitchError::Bench)?;
                        switch.attach(port)?;
                    }
                    let _ = stop_rx.await;
                    let cpu = cpu_start.zip(cpu_time::thread()).map(|(a, b)| b - a);
                    switch.close().await;
                    Ok(cpu)
                })
            })
            .map_err(SwitchError::Bench)?
    };

    // Each side introduces itself, so that the switch learns both addresses.
    let hello = |src: MacAddr| {
        let mut payload = vec![0u8; MIN_FRAME_LEN];
        payload[..6].copy_from_slice(&MacAddr::BROADCAST.0);
        payload[6..12].copy_from_slice(&src.0);
        payload[12..14].copy_from_slice(&ETHERTYPE);
        frame::encode(&payload)
    };
    let learn = (|| {
        receiver.write_all(&hello(RECEIVER))?;
        sender.write_all(&hello(SENDER))?;
        // Each hello was flooded to the other side: read them off.
        let mut skip = vec![0u8; LEN_PREFIX + MIN_FRAME_LEN];
        sender.read_exact(&mut skip)?;
        receiver.read_exact(&mut skip)?;
        receiver.set_read_timeout(Some(STALL_TIMEOUT))
    })();
    learn.map_err(SwitchError::Bench)?;

    let mut payload = vec![0u8; frame_len];
    payload[..6].copy_from_slice(&RECEIVER.0);
    payload[6..12].copy_from_slice(&SENDER.0);
    payload[12..14].copy_from_slice(&ETHERTYPE);
    let one = frame::encode(&payload);
    let frames = total_bytes.div_ceil(frame_len as u64).max(1);
    let wire_total = frames * one.len() as u64;
    // Several frames per write: the sender is not what is measured.
    let per_write = (window_bytes as usize / one.len()).clamp(1, 64);
    let batch = one.repeat(per_write);

    let received = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let receiving = {
        let received = Arc::clone(&received);
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 1 << 20];
            let mut got = 0u64;
            while got < wire_total {
                match receiver.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        got += n as u64;
                        received.store(got, Ordering::Release);
                    }
                }
            }
            got
        })
    };
    let mut sent_frames = 0u64;
    let mut send_error = None;
    while sent_frames < frames {
        let n = (frames - sent_frames).min(per_write as u64);
        let sent_bytes = sent_frames * one.len() as u64;
        // Stay within the window; the receiver thread moves it.
        while sent_bytes.saturating_sub(received.load(Ordering::Acquire)) > window_bytes {
            if receiving.is_finished() {
                break;
            }
            std::thread::yield_now();
        }
        if let Err(e) = sender.write_all(&batch[..n as usize * one.len()]) {
            send_error = Some(e);
            break;
        }
        sent_frames += n;
    }
    let got = receiving.join().unwrap_or(0);
    let wall = started.elapsed();
    let _ = stop_tx.send(());
    let switch_cpu = match switch_thread.join() {
        Ok(result) => result?,
        Err(_) => None,
    };
    if let Some(e) = send_error {
        return Err(SwitchError::Bench(e));
    }
    let got_frames = got / one.len() as u64;
    Ok(BenchReport {
        bytes: got_frames * frame_len as u64,
        frames: got_frames,
        frame_len,
        wall,
        switch_cpu,
        stats: switch.stats(),
    })
}

#[cfg(target_os = "linux")]
mod cpu_time {
    use std::time::Duration;

    use nix::sys::resource::{getrusage, UsageWho};

    /// User plus system CPU time of the calling thread.
    pub fn thread() -> Option<Duration> {
        let usage = getrusage(UsageWho::RUSAGE_THREAD).ok()?;
        let micros = |t: nix::sys::time::TimeVal| {
            Duration::from_secs(t.tv_sec().max(0) as u64)
                + Duration::from_micros(t.tv_usec().max(0) as u64)
        };
        Some(micros(usage.user_time()) + micros(usage.system_time()))
    }
}

#[cfg(not(target_os = "linux"))]
mod cpu_time {
    use std::time::Duration;

    /// Not measured on this OS.
    pub fn thread() -> Option<Duration> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_forward_delivers_every_byte_and_measures_cpu() {
        let report = forward(8 << 20, 1514).unwrap();
        let frames = (8u64 << 20).div_ceil(1514);
        assert_eq!(report.frames, frames);
        assert_eq!(report.bytes, frames * 1514);
        assert_eq!(report.stats.total.drops, 0);
        assert!(report.gbit_per_s() > 0.0);
        if cfg!(target_os = "linux") {
            assert!(report.switch_cpu.is_some_and(|cpu| cpu > Duration::ZERO));
            assert!(report.cpu_per_gib().is_some());
        }
        assert!(matches!(forward(1, 13), Err(SwitchError::Options(_))));
    }
}
