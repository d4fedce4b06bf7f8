//! The switch: its ports, the forwarding decision for each frame, and the listener.

use std::collections::BTreeMap;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc::{self, error::TrySendError};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, trace, warn};

use super::frame::{self, Frame, FrameError};
use super::log_limit::LogLimit;
use super::mac_table::{Learned, MacTable};
use super::port::{self, PortEnd, PortId};
use super::stats::{self, PortCounters, PortStats, SwitchCounters, SwitchStats};
use super::{SwitchError, SwitchOptions};

/// How long [`Switch::close`] waits for the ports' tasks to end.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// A learning Ethernet switch. Cheap to clone: clones share the ports and the table.
#[derive(Clone)]
pub struct Switch {
    shared: Arc<Shared>,
}

/// What the ports' tasks and the listener share.
pub struct Shared {
    options: SwitchOptions,
    state: Mutex<State>,
    counters: SwitchCounters,
    bad_frame_log: LogLimit,
    accept_log: LogLimit,
    stop: CancellationToken,
    /// Ports whose task has not ended yet.
    live_ports: watch::Sender<usize>,
}

struct State {
    table: MacTable,
    ports: BTreeMap<PortId, PortHandle>,
    next_id: u64,
    /// Counters of the ports gone, added up.
    closed: PortStats,
}

struct PortHandle {
    queue: mpsc::Sender<Frame>,
    counters: Arc<PortCounters>,
}

impl Shared {
    pub fn options(&self) -> &SwitchOptions {
        &self.options
    }

    /// Resolves when the switch shuts down.
    pub async fn stopped(&self) {
        self.stop.cancelled().await
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // The state stays consistent at every await-free step; a panic elsewhere cannot
        // leave it half-changed.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Learns the frame's source and sends it where its destination is (or everywhere
    /// else). Never waits: a full queue drops the frame and counts it on that port.
    pub fn forward(&self, ingress: PortId, frame: Frame) {
        let Some((dst, src)) = frame::addresses(&frame) else {
            return;
        };
        let now = Instant::now();
        let mut state = self.state();
        if let Learned::Moved { from } = state.table.learn(src, ingress, now) {
            debug!(mac = %src, from = %from, to = %ingress, "address moved to another port");
        }
        let target = if dst.is_multicast() {
            None
        } else {
            state.table.lookup(dst, now)
        };
        trace!(port = %ingress, %src, %dst, len = frame.len() - frame::LEN_PREFIX, ?target, "frame");
        match target {
            Some(port) if port == ingress => {
                self.counters
                    .filtered
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            Some(port) => {
                if let Some(handle) = state.ports.get(&port) {
                    deliver(handle, frame);
                }
            }
            None => {
                self.counters
                    .floods
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                for (_, handle) in state.ports.iter().filter(|(id, _)| **id != ingress) {
                    deliver(handle, Arc::clone(&frame));
                }
            }
        }
    }

    /// Unplugs a port: its queue, its addresses; its counters go to the sums.
    fn remove_port(&self, id: PortId) -> Option<PortStats> {
        let mut state = self.state();
        let handle = state.ports.remove(&id)?;
        let purged = state.table.purge_port(id);
        let snapshot = handle.counters.snapshot(id.0);
        stats::add_closed(&mut state.closed, &snapshot);
        drop(state);
        debug!(port = %id, purged, "port removed");
        Some(snapshot)
    }
}

fn deliver(handle: &PortHandle, frame: Frame) {
    match handle.queue.try_send(frame) {
        Ok(()) => {}
        Err(TrySendError::Full(_)) => {
            handle
                .counters
                .drops
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        // The port is closing.
        Err(TrySendError::Closed(_)) => {}
    }
}

/// Removes the port when its task ends, however it ends (the runtime may drop it).
struct PortGuard {
    shared: Arc<Shared>,
    id: PortId,
}

impl Drop for PortGuard {
    fn drop(&mut self) {
        self.shared.remove_port(self.id);
        self.shared
            .live_ports
            .send_modify(|n| *n = n.saturating_sub(1));
    }
}

impl Switch {
    /// A switch with no ports.
    pub fn new(options: SwitchOptions) -> Result<Switch, SwitchError> {
        options.validate()?;
        Ok(Switch {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    table: MacTable::new(options.aging, options.max_macs),
                    ports: BTreeMap::new(),
                    next_id: 1,
                    closed: PortStats::default(),
                }),
                options,
                counters: SwitchCounters::default(),
                bad_frame_log: LogLimit::new(10, Duration::from_secs(60)),
                accept_log: LogLimit::new(10, Duration::from_secs(60)),
                stop: CancellationToken::new(),
                live_ports: watch::channel(0).0,
            }),
        })
    }

    /// Plugs a connected stream in as a new port, served by a task on the current tokio
    /// runtime until the peer closes, sends a bad frame, or the switch closes.
    pub fn attach(&self, stream: UnixStream) -> Result<PortId, SwitchError> {
        let shared = &self.shared;
        if shared.stop.is_cancelled() {
            return Err(SwitchError::ShutDown);
        }
        let (queue, queued) = mpsc::channel(shared.options.queue_frames);
        let counters = Arc::new(PortCounters::default());
        let id = {
            let mut state = shared.state();
            if state.ports.len() >= shared.options.max_ports {
                shared
                    .counters
                    .ports_refused
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return Err(SwitchError::PortsFull {
                    max: shared.options.max_ports,
                });
            }
            let id = PortId(state.next_id);
            state.next_id += 1;
            state.ports.insert(
                id,
                PortHandle {
                    queue,
                    counters: Arc::clone(&counters),
                },
            );
            id
        };
        shared
            .counters
            .ports_opened
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        shared.live_ports.send_modify(|n| *n += 1);
        info!(port = %id, "port connected");
        let guard = PortGuard {
            shared: Arc::clone(shared),
            id,
        };
        tokio::spawn(async move {
            let end = port::serve(&guard.shared, id, stream, queued, &counters).await;
            let stats = counters.snapshot(id.0);
            match end {
                PortEnd::PeerClosed => info!(
                    port = %id,
                    frames_in = stats.frames_in,
                    frames_out = stats.frames_out,
                    drops = stats.drops,
                    "port disconnected"
                ),
                PortEnd::Input(e @ FrameError::BadLength { .. }) => {
                    guard
                        .shared
                        .counters
                        .bad_frames
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if let Some(suppressed) = guard.shared.bad_frame_log.check() {
                        warn!(port = %id, error = %e, suppressed, "closing the port: not a frame");
                    }
                }
                PortEnd::Input(e) => {
                    info!(port = %id, error = %e, "port closed while reading")
                }
                PortEnd::Output(e) => {
                    info!(port = %id, error = %e, "port closed while writing")
                }
                PortEnd::Stopped => debug!(port = %id, "port stopped"),
            }
            drop(guard);
        });
        Ok(id)
    }

    /// Accepts ports on `listener` until `shutdown`, then closes every port.
    pub async fn serve(&self, listener: UnixListener, shutdown: CancellationToken) {
        let aging = self.shared.options.aging;
        let period = (aging / 2).clamp(Duration::from_millis(100), Duration::from_secs(30));
        let mut sweep = tokio::time::interval(period);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = self.shared.stopped() => break,
                _ = sweep.tick() => {
                    let expired = self.shared.state().table.expire(Instant::now());
                    if expired > 0 {
                        debug!(expired, "aged-out addresses removed");
                    }
                }
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        if let Err(e) = self.attach(stream) {
                            if let Some(suppressed) = self.shared.accept_log.check() {
                                warn!(error = %e, suppressed, "connection refused");
                            }
                        }
                    }
                    Err(e) => {
                        // Out of file descriptors, most likely: wait, then try again.
                        if let Some(suppressed) = self.shared.accept_log.check() {
                            warn!(error = %e, suppressed, "cannot accept a connection");
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        }
        self.close().await;
    }

    /// Closes every port and refuses new ones; waits (a bounded time) for their tasks.
    pub async fn close(&self) {
        self.shared.stop.cancel();
        let mut live = self.shared.live_ports.subscribe();
        if tokio::time::timeout(CLOSE_TIMEOUT, live.wait_for(|n| *n == 0))
            .await
            .is_err()
        {
            warn!(
                ports = *live.borrow(),
                "ports still open {CLOSE_TIMEOUT:?} after the switch closed"
            );
        }
    }

    /// The counters now.
    pub fn stats(&self) -> SwitchStats {
        let state = self.shared.state();
        let ports = state
            .ports
            .iter()
            .map(|(id, handle)| handle.counters.snapshot(id.0))
            .collect();
        SwitchStats::collect(
            ports,
            &state.closed,
            &self.shared.counters,
            state.table.len(),
        )
    }

    /// The options the switch runs with.
    pub fn options(&self) -> &SwitchOptions {
        &self.shared.options
    }
}

/// Runs a switch on a unix socket at `listen_path` until `shutdown`; returns its final
/// counters. The socket is made owner-only (0600); a stale socket file left by a switch
/// that died is replaced, a live one is an error ([`SwitchError::InUse`]). The socket file
/// is removed on the way out.
pub async fn run(
    listen_path: &Path,
    options: SwitchOptions,
    shutdown: CancellationToken,
) -> Result<SwitchStats, SwitchError> {
    let idle_exit = options.idle_exit;
    let switch = Switch::new(options)?;
    let listener = listen(listen_path)?;
    info!(path = %listen_path.display(), "switch listening");
    let stop = shutdown.child_token();
    let idle_watch = idle_exit.map(|after| {
        let stop = stop.clone();
        let switch = switch.clone();
        tokio::spawn(async move {
            let mut idle_since = tokio::time::Instant::now();
            loop {
                tokio::time::sleep(Duration::from_millis(250).min(after)).await;
                if !switch.stats().ports.is_empty() {
                    idle_since = tokio::time::Instant::now();
                } else if idle_since.elapsed() >= after {
                    info!(?after, "no port for a while: the switch ends");
                    stop.cancel();
                    return;
                }
            }
        })
    });
    switch.serve(listener, stop).await;
    if let Some(task) = idle_watch {
        task.abort();
    }
    if let Err(e) = std::fs::remove_file(listen_path) {
        debug!(path = %listen_path.display(), error = %e, "cannot remove the socket");
    }
    let stats = switch.stats();
    info!(
        frames = stats.total.frames_in,
        bytes = stats.total.bytes_in,
        drops = stats.total.drops,
        "switch stopped"
    );
    Ok(stats)
}

fn listen(path: &Path) -> Result<UnixListener, SwitchError> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(SwitchError::InUse {
                    path: path.to_path_buf(),
                });
            }
            std::fs::remove_file(path).map_err(|source| SwitchError::RemoveStale {
                path: path.to_path_buf(),
                source,
            })?;
        }
        Ok(_) => {
            return Err(SwitchError::NotASocket {
                path: path.to_path_buf(),
            })
        }
        Err(_) => {}
    }
    let listener = UnixListener::bind(path).map_err(|source| SwitchError::Listen {
        path: path.to_path_buf(),
        source,
    })?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(|source| {
        SwitchError::Permissions {
            path: path.to_path_buf(),
            source,
        }
    })?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::switch::frame::{encode, LEN_PREFIX};
    use crate::switch::mac_table::MacAddr;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const MAC_A: MacAddr = MacAddr([0x52, 0x54, 0, 0, 0, 0xa]);
    const MAC_B: MacAddr = MacAddr([0x52, 0x54, 0, 0, 0, 0xb]);
    const MAC_C: MacAddr = MacAddr([0x52, 0x54, 0, 0, 0, 0xc]);
    const MAC_S: MacAddr = MacAddr([0x52, 0x54, 0, 0, 0, 0x5]);
    const WAIT: Duration = Duration::from_secs(5);
    const QUIET: Duration = Duration::from_millis(200);

    /// A framed Ethernet frame from `src` to `dst` with `len` bytes in all.
    fn eth(dst: MacAddr, src: MacAddr, len: usize, tag: u8) -> Vec<u8> {
        let mut payload = vec![tag; len.max(14)];
        payload[..6].copy_from_slice(&dst.0);
        payload[6..12].copy_from_slice(&src.0);
        payload[12..14].copy_from_slice(&[0x88, 0xb5]);
        encode(&payload)
    }

    fn switch_with(options: SwitchOptions) -> Switch {
        Switch::new(options).unwrap()
    }

    /// Plugs a new port in; returns the peer's end.
    fn plug(switch: &Switch) -> UnixStream {
        let (port, peer) = UnixStream::pair().unwrap();
        switch.attach(port).unwrap();
        peer
    }

    async fn send(peer: &mut UnixStream, frame: &[u8]) {
        tokio::time::timeout(WAIT, peer.write_all(frame))
            .await
            .expect("write did not block")
            .unwrap();
    }

    async fn recv(peer: &mut UnixStream) -> Vec<u8> {
        tokio::time::timeout(WAIT, async {
            let mut prefix = [0u8; LEN_PREFIX];
            peer.read_exact(&mut prefix).await.unwrap();
            let mut frame = prefix.to_vec();
            frame.resize(LEN_PREFIX + u32::from_be_bytes(prefix) as usize, 0);
            peer.read_exact(&mut frame[LEN_PREFIX..]).await.unwrap();
            frame
        })
        .await
        .expect("a frame within the timeout")
    }

    async fn assert_quiet(peer: &mut UnixStream) {
        let mut byte = [0u8; 1];
        if let Ok(read) = tokio::time::timeout(QUIET, peer.read(&mut byte)).await {
            panic!("expected nothing, read {read:?}");
        }
    }

    /// Waits until the switch's counters satisfy `done`.
    async fn wait_stats(switch: &Switch, done: impl Fn(&SwitchStats) -> bool) -> SwitchStats {
        let deadline = Instant::now() + WAIT;
        loop {
            let stats = switch.stats();
            if done(&stats) {
                return stats;
            }
            assert!(Instant::now() < deadline, "stats never matched: {stats:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn test_broadcast_reaches_every_port_but_the_sender() {
        let switch = switch_with(SwitchOptions::default());
        let (mut a, mut b, mut c) = (plug(&switch), plug(&switch), plug(&switch));
        let hello = eth(MacAddr::BROADCAST, MAC_A, 60, 1);
        send(&mut a, &hello).await;
        assert_eq!(recv(&mut b).await, hello);
        assert_eq!(recv(&mut c).await, hello);
        assert_quiet(&mut a).await;
        let multicast = eth(MacAddr([0x01, 0, 0x5e, 0, 0, 0xfb]), MAC_A, 60, 2);
        send(&mut a, &multicast).await;
        assert_eq!(recv(&mut b).await, multicast);
        assert_eq!(recv(&mut c).await, multicast);
        let stats = switch.stats();
        assert_eq!(stats.floods, 2);
        assert_eq!(stats.port(1).unwrap().frames_in, 2);
        assert_eq!(stats.port(1).unwrap().bytes_in, 120);
        let stats = wait_stats(&switch, |s| s.total.frames_out == 4).await;
        assert_eq!(stats.port(2).unwrap().bytes_out, 120);
    }

    #[tokio::test]
    async fn test_learned_address_gets_unicast_only_and_unknown_is_flooded() {
        let switch = switch_with(SwitchOptions::default());
        let (mut a, mut b, mut c) = (plug(&switch), plug(&switch), plug(&switch));
        // Unknown destination: flooded.
        let to_unknown = eth(MAC_B, MAC_A, 100, 1);
        send(&mut a, &to_unknown).await;
        assert_eq!(recv(&mut b).await, to_unknown);
        assert_eq!(recv(&mut c).await, to_unknown);
        // A has talked: B -> A goes to A alone.
        let reply = eth(MAC_A, MAC_B, 100, 2);
        send(&mut b, &reply).await;
        assert_eq!(recv(&mut a).await, reply);
        assert_quiet(&mut c).await;
        // And B is known now too.
        let again = eth(MAC_B, MAC_A, 100, 3);
        send(&mut a, &again).await;
        assert_eq!(recv(&mut b).await, again);
        assert_quiet(&mut c).await;
        let stats = switch.stats();
        assert_eq!((stats.floods, stats.mac_entries), (1, 2));
    }

    #[tokio::test]
    async fn test_learned_address_ages_out_and_is_flooded_again() {
        let switch = switch_with(SwitchOptions {
            aging: Duration::from_millis(300),
            ..SwitchOptions::default()
        });
        let (mut a, mut b, mut c) = (plug(&switch), plug(&switch), plug(&switch));
        send(&mut a, &eth(MacAddr::BROADCAST, MAC_A, 60, 1)).await;
        recv(&mut b).await;
        recv(&mut c).await;
        let to_a = eth(MAC_A, MAC_B, 60, 2);
        send(&mut b, &to_a).await;
        assert_eq!(recv(&mut a).await, to_a);
        assert_quiet(&mut c).await;
        tokio::time::sleep(Duration::from_millis(400)).await;
        send(&mut b, &to_a).await;
        assert_eq!(recv(&mut a).await, to_a);
        assert_eq!(recv(&mut c).await, to_a, "an aged-out address is flooded");
    }

    #[tokio::test]
    async fn test_slow_port_does_not_block_the_others_and_its_drops_are_counted() {
        let switch = switch_with(SwitchOptions {
            queue_frames: 16,
            ..SwitchOptions::default()
        });
        let (mut a, mut b, mut slow) = (plug(&switch), plug(&switch), plug(&switch));
        // Everyone introduces itself; the slow port reads this once and never again.
        for (peer, mac) in [(&mut b, MAC_B), (&mut slow, MAC_S)] {
            send(peer, &eth(MacAddr::BROADCAST, mac, 60, 0)).await;
        }
        for _ in 0..2 {
            recv(&mut a).await;
        }
        recv(&mut b).await;
        recv(&mut slow).await;
        // 6 MB for the slow port: far more than its socket, write buffer and queue hold.
        let bulk = eth(MAC_S, MAC_A, 1514, 7).repeat(4000);
        send(&mut a, &bulk).await;
        // B is served all the same, both ways.
        let to_b = eth(MAC_B, MAC_A, 60, 8);
        send(&mut a, &to_b).await;
        assert_eq!(recv(&mut b).await, to_b);
        let to_a = eth(MAC_A, MAC_B, 60, 9);
        send(&mut b, &to_a).await;
        assert_eq!(recv(&mut a).await, to_a);
        let stats = wait_stats(&switch, |s| s.port(1).is_some_and(|p| p.frames_in == 4001)).await;
        let slow_stats = stats.port(3).unwrap();
        assert!(slow_stats.drops > 3000, "{slow_stats:?}");
        assert!(
            slow_stats.frames_out + slow_stats.drops <= 4001,
            "{slow_stats:?}"
        );
        assert_eq!(stats.port(2).unwrap().drops, 0);
        assert_eq!(stats.total.drops, slow_stats.drops);
    }

    #[tokio::test]
    async fn test_garbage_length_closes_only_that_port() {
        let options = SwitchOptions::default();
        let max = options.max_frame_len as u32;
        let switch = switch_with(options);
        let (mut a, mut b) = (plug(&switch), plug(&switch));
        for garbage in [0u32, 13, max + 1, u32::MAX] {
            let mut bad = plug(&switch);
            send(&mut bad, &garbage.to_be_bytes()).await;
            let mut rest = Vec::new();
            let read = tokio::time::timeout(WAIT, bad.read_to_end(&mut rest)).await;
            assert!(
                matches!(read, Ok(Ok(0))),
                "length {garbage}: the port is closed"
            );
        }
        let stats = wait_stats(&switch, |s| s.ports.len() == 2).await;
        assert_eq!(stats.bad_frames, 4);
        let hello = eth(MacAddr::BROADCAST, MAC_A, 60, 1);
        send(&mut a, &hello).await;
        assert_eq!(recv(&mut b).await, hello);
        // The largest frame still passes.
        let big = eth(MAC_A, MAC_B, max as usize, 2);
        send(&mut b, &big).await;
        assert_eq!(recv(&mut a).await, big);
    }

    #[tokio::test]
    async fn test_disconnect_purges_the_port_and_its_addresses() {
        let switch = switch_with(SwitchOptions::default());
        let (mut a, mut b, mut c) = (plug(&switch), plug(&switch), plug(&switch));
        send(&mut a, &eth(MacAddr::BROADCAST, MAC_A, 60, 1)).await;
        recv(&mut b).await;
        recv(&mut c).await;
        assert_eq!(switch.stats().mac_entries, 1);
        drop(a);
        let stats = wait_stats(&switch, |s| s.ports.len() == 2).await;
        assert_eq!(stats.mac_entries, 0);
        assert_eq!(
            stats.total.frames_in, 1,
            "a gone port's counters stay in the total"
        );
        // MAC_A is unknown again: flooded, to C as well.
        let to_a = eth(MAC_A, MAC_B, 60, 2);
        send(&mut b, &to_a).await;
        assert_eq!(recv(&mut c).await, to_a);
        // A new port may take the address.
        let mut a2 = plug(&switch);
        send(&mut a2, &eth(MAC_C, MAC_A, 60, 3)).await;
        recv(&mut b).await;
        recv(&mut c).await;
        send(&mut b, &to_a).await;
        assert_eq!(recv(&mut a2).await, to_a);
        assert_quiet(&mut c).await;
    }

    #[tokio::test]
    async fn test_ports_beyond_the_limit_are_refused() {
        let switch = switch_with(SwitchOptions {
            max_ports: 2,
            ..SwitchOptions::default()
        });
        let _a = plug(&switch);
        let _b = plug(&switch);
        let (port, _peer) = UnixStream::pair().unwrap();
        assert!(matches!(
            switch.attach(port),
            Err(SwitchError::PortsFull { max: 2 })
        ));
        assert_eq!(switch.stats().ports_refused, 1);
    }

    /// With `idle_exit`, the switch stays while a port is connected and ends on its own
    /// once none has been for that long.
    #[tokio::test]
    async fn test_idle_switch_ends_after_its_last_port() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("net.sock");
        let options = SwitchOptions {
            idle_exit: Some(Duration::from_millis(600)),
            ..SwitchOptions::default()
        };
        let running = {
            let path = path.clone();
            tokio::spawn(async move { run(&path, options, CancellationToken::new()).await })
        };
        let deadline = Instant::now() + WAIT;
        let port = loop {
            match UnixStream::connect(&path).await {
                Ok(stream) => break stream,
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(10)).await
                }
                Err(e) => panic!("switch never listened: {e}"),
            }
        };
        // Connected for longer than the idle time: it stays.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(!running.is_finished(), "it ended with a port connected");
        drop(port);
        tokio::time::timeout(WAIT, running)
            .await
            .expect("it ends once idle")
            .unwrap()
            .unwrap();
        assert!(!path.exists(), "its socket is removed");
    }

    #[tokio::test]
    async fn test_run_serves_the_socket_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("net.sock");
        // A socket file left by a switch that died is replaced.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let shutdown = CancellationToken::new();
        let running = {
            let (path, shutdown) = (path.clone(), shutdown.clone());
            tokio::spawn(async move { run(&path, SwitchOptions::default(), shutdown).await })
        };
        let deadline = Instant::now() + WAIT;
        let mut a = loop {
            match UnixStream::connect(&path).await {
                Ok(stream) => break stream,
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(10)).await
                }
                Err(e) => panic!("switch never listened: {e}"),
            }
        };
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let mut b = UnixStream::connect(&path).await.unwrap();
        // Both ports are attached once a frame gets through.
        let deadline = Instant::now() + WAIT;
        let hello = eth(MacAddr::BROADCAST, MAC_A, 60, 1);
        loop {
            send(&mut a, &hello).await;
            let mut prefix = [0u8; LEN_PREFIX];
            if let Ok(read) = tokio::time::timeout(QUIET, b.read_exact(&mut prefix)).await {
                read.unwrap();
                let mut rest = vec![0u8; u32::from_be_bytes(prefix) as usize];
                b.read_exact(&mut rest).await.unwrap();
                break;
            }
            assert!(Instant::now() < deadline, "no frame got through");
        }
        assert!(matches!(
            run(&path, SwitchOptions::default(), CancellationToken::new()).await,
            Err(SwitchError::InUse { .. })
        ));
        shutdown.cancel();
        let stats = tokio::time::timeout(WAIT, running)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(stats.total.frames_in >= 1);
        assert!(stats.ports.is_empty());
        assert!(!path.exists());
        // Not a socket: left alone.
        std::fs::write(&path, b"precious").unwrap();
        assert!(matches!(
            run(&path, SwitchOptions::default(), CancellationToken::new()).await,
            Err(SwitchError::NotASocket { .. })
        ));
        assert_eq!(std::fs::read(&path).unwrap(), b"precious");
        assert!(matches!(
            run(
                &path,
                SwitchOptions {
                    queue_frames: 0,
                    ..SwitchOptions::default()
                },
                CancellationToken::new()
            )
            .await,
            Err(SwitchError::Options(_))
        ));
    }
}
