//! The virtio-fs device: configuration space, feature negotiation and vring setup for a
//! vhost-user backend.

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use vhost::vhost_user::message::{
    VhostUserHeaderFlag, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::watchdog::Watchdog;
use super::{FsConfig, FsError, QUEUE_SIZE, REQUEST_QUEUES, TAG_MAX_LEN};
use crate::virtio::defs::device_type::FS as DEVICE_TYPE_FS;
use crate::virtio::defs::features::{VIRTIO_F_VERSION_1, VIRTIO_RING_F_INDIRECT_DESC};
use crate::virtio::{
    feature_bit, read_config_bytes, ActivateError, ActiveQueues, VirtioDevice, VirtioInterrupt,
};
use crate::GuestMemory;

/// VIRTIO_RING_F_EVENT_IDX: the backend and the driver suppress notifications themselves.
const VIRTIO_RING_F_EVENT_IDX: u32 = 29;
/// Queues: the high-priority queue, then the request queues.
const NUM_QUEUES: usize = 1 + REQUEST_QUEUES;

/// Counters of the fs device.
#[derive(Debug, Default, serde::Serialize)]
pub struct FsMetrics {
    /// Times the driver started the device.
    pub activations: AtomicU64,
    /// Used-buffer notifications from the backend passed on as interrupts.
    pub interrupts: AtomicU64,
    /// vhost-user requests that failed (the backend went away or refused).
    pub backend_errors: AtomicU64,
    /// Exchanges the backend did not answer in time (the connection was shut down).
    pub backend_timeouts: AtomicU64,
}

/// What an activated device keeps.
struct Active {
    interrupt: Arc<VirtioInterrupt>,
}

/// A virtio-fs device backed by a vhost-user backend.
pub struct Fs {
    tag: String,
    socket_path: PathBuf,
    config_space: Vec<u8>,
    frontend: Frontend,
    /// A duplicate of the frontend's connection, for the deadline of each exchange.
    conn: UnixStream,
    timeout: Duration,
    /// Virtio features offered to the driver (what the device supports and the backend has).
    avail_features: u64,
    /// Whether VHOST_USER_F_PROTOCOL_FEATURES was negotiated (rings then start disabled).
    protocol_features: bool,
    mem: GuestMemory,
    queue_sizes: [u16; NUM_QUEUES],
    kick_evts: Vec<EventFd>,
    pub(super) call_evts: Vec<EventFd>,
    active: Option<Active>,
    pub(super) metrics: Arc<FsMetrics>,
}

impl Fs {
    /// Connects to the backend at `cfg.socket_path` and negotiates what the device offers.
    /// `mem` must be shared memory (every region backed by a file).
    pub fn new(cfg: FsConfig, mem: GuestMemory) -> Result<Self, FsError> {
        if cfg.tag.is_empty() || cfg.tag.len() > TAG_MAX_LEN {
            return Err(FsError::Tag(cfg.tag));
        }
        if mem.iter().any(|r| r.file_offset().is_none()) {
            return Err(FsError::MemoryNotShared);
        }
        let path = cfg.socket_path.clone();
        let conn = connect(&path)?;
        let mut frontend = Frontend::from_stream(
            conn.try_clone().map_err(|source| FsError::Connect {
                path: path.clone(),
                source,
            })?,
            NUM_QUEUES as u64,
        );
        let deadline = Watchdog::start(&conn, cfg.timeout).map_err(|source| FsError::Connect {
            path: path.clone(),
            source,
        })?;
        let negotiated = negotiate(&mut frontend, &path);
        let expired = deadline.finish();
        // An expired deadline shut the connection down, even if the last answer just made it.
        let (avail_features, protocol_features) = match negotiated {
            Err(FsError::Backend { path, step, .. }) if expired => {
                return Err(FsError::Timeout {
                    path,
                    step,
                    timeout: cfg.timeout,
                })
            }
            Ok(_) if expired => {
                return Err(FsError::Timeout {
                    path,
                    step: "negotiation",
                    timeout: cfg.timeout,
                })
            }
            other => other?,
        };

        // struct virtio_fs_config { u8 tag[36]; le32 num_request_queues; }
        let mut config_space = vec![0u8; TAG_MAX_LEN + 4];
        config_space[..cfg.tag.len()].copy_from_slice(cfg.tag.as_bytes());
        config_space[TAG_MAX_LEN..].copy_from_slice(&(REQUEST_QUEUES as u32).to_le_bytes());

        let eventfds = || {
            (0..NUM_QUEUES)
                .map(|_| EventFd::new(EFD_NONBLOCK).map_err(FsError::EventFd))
                .collect::<Result<Vec<_>, _>>()
        };
        tracing::info!(tag = %cfg.tag, socket = %path.display(), features = format_args!("{avail_features:#x}"), "virtio-fs: backend connected");
        Ok(Fs {
            tag: cfg.tag,
            socket_path: cfg.socket_path,
            config_space,
            frontend,
            conn,
            timeout: cfg.timeout,
            avail_features,
            protocol_features,
            mem,
            queue_sizes: [QUEUE_SIZE; NUM_QUEUES],
            kick_evts: eventfds()?,
            call_evts: eventfds()?,
            active: None,
            metrics: Arc::new(FsMetrics::default()),
        })
    }

    /// The device's counters.
    pub fn metrics(&self) -> Arc<FsMetrics> {
        self.metrics.clone()
    }

    /// The mount tag.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// Passes a backend's used-buffer notification on to the driver.
    pub(super) fn handle_call(&mut self, queue: usize) {
        let Some(evt) = self.call_evts.get(queue) else {
            return;
        };
        let _ = evt.read();
        if let Some(active) = &self.active {
            self.metrics.interrupts.fetch_add(1, Ordering::Relaxed);
            active.interrupt.signal_used_queue();
        }
    }

    fn backend_error(&self, step: &str, e: &vhost::Error) -> ActivateError {
        self.metrics.backend_errors.fetch_add(1, Ordering::Relaxed);
        ActivateError::Backend(std::io::Error::other(format!(
            "virtio-fs {:?}: vhost-user backend at {}: {step}: {e}",
            self.tag,
            self.socket_path.display()
        )))
    }

    /// The host address of `len` bytes of guest memory at `addr`, which must lie in one region
    /// (the backend maps regions separately).
    fn host_addr(&self, what: &str, addr: u64, len: usize) -> Result<u64, ActivateError> {
        let slice = self.mem.get_slice(GuestAddress(addr), len).map_err(|e| {
            ActivateError::Backend(std::io::Error::other(format!(
                "virtio-fs {:?}: {what} at {addr:#x} ({len} bytes) is not in guest memory: {e}",
                self.tag
            )))
        })?;
        Ok(slice.ptr_guard().as_ptr() as u64)
    }

    /// Starts the deadline of one exchange with the backend.
    fn deadline(&self) -> Result<Watchdog, ActivateError> {
        Watchdog::start(&self.conn, self.timeout).map_err(ActivateError::Backend)
    }

    /// Ends the deadline of an exchange; true (counted, logged) when the backend overran it,
    /// which leaves the connection shut down.
    fn expired(&self, deadline: Watchdog, what: &str) -> bool {
        if !deadline.finish() {
            return false;
        }
        self.metrics
            .backend_timeouts
            .fetch_add(1, Ordering::Relaxed);
        tracing::error!(
            tag = %self.tag,
            socket = %self.socket_path.display(),
            "virtio-fs: the vhost-user backend did not answer within {} s while {what}; its connection is closed, restart the VM to use this share again",
            self.timeout.as_secs_f64()
        );
        true
    }

    /// Tells the backend about guest memory and every ring.
    fn setup_backend(&mut self, queues: &[Queue], acked: u64) -> Result<(), ActivateError> {
        let protocol_bit = if self.protocol_features {
            VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
        } else {
            0
        };
        self.frontend
            .set_features((acked & self.avail_features) | protocol_bit)
            .map_err(|e| self.backend_error("SET_FEATURES", &e))?;
        let regions: Vec<VhostUserMemoryRegionInfo> = self
            .mem
            .iter()
            .filter_map(|r| {
                let file = r.file_offset()?;
                Some(VhostUserMemoryRegionInfo {
                    guest_phys_addr: r.start_addr().0,
                    memory_size: r.len(),
                    userspace_addr: r.as_ptr() as u64,
                    mmap_offset: file.start(),
                    mmap_handle: file.file().as_raw_fd(),
                })
            })
            .collect();
        self.frontend
            .set_mem_table(&regions)
            .map_err(|e| self.backend_error("SET_MEM_TABLE", &e))?;
        for (i, q) in queues.iter().enumerate() {
            let size = q.size();
            let n = usize::from(size);
            let desc = self.host_addr("descriptor table", q.desc_table(), 16 * n)?;
            let avail = self.host_addr("available ring", q.avail_ring(), 6 + 2 * n)?;
            let used = self.host_addr("used ring", q.used_ring(), 6 + 8 * n)?;
            let vring = VringConfigData {
                queue_max_size: self.queue_sizes[i],
                queue_size: size,
                flags: 0,
                desc_table_addr: desc,
                used_ring_addr: used,
                avail_ring_addr: avail,
                log_addr: None,
            };
            self.frontend
                .set_vring_num(i, size)
                .map_err(|e| self.backend_error("SET_VRING_NUM", &e))?;
            self.frontend
                .set_vring_addr(i, &vring)
                .map_err(|e| self.backend_error("SET_VRING_ADDR", &e))?;
            self.frontend
                .set_vring_base(i, q.next_avail())
                .map_err(|e| self.backend_error("SET_VRING_BASE", &e))?;
            self.frontend
                .set_vring_call(i, &self.call_evts[i])
                .map_err(|e| self.backend_error("SET_VRING_CALL", &e))?;
            self.frontend
                .set_vring_kick(i, &self.kick_evts[i])
                .map_err(|e| self.backend_error("SET_VRING_KICK", &e))?;
            if self.protocol_features {
                self.frontend
                    .set_vring_enable(i, true)
                    .map_err(|e| self.backend_error("SET_VRING_ENABLE", &e))?;
            }
        }
        Ok(())
    }

    /// Stops the backend's rings (GET_VRING_BASE stops a ring, vhost-user spec).
    fn stop_backend(&mut self) {
        for i in 0..NUM_QUEUES {
            if self.protocol_features {
                if let Err(e) = self.frontend.set_vring_enable(i, false) {
                    self.metrics.backend_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(tag = %self.tag, queue = i, error = %e, "virtio-fs: cannot disable a ring");
                }
            }
            if let Err(e) = self.frontend.get_vring_base(i) {
                self.metrics.backend_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(tag = %self.tag, queue = i, error = %e, "virtio-fs: cannot stop a ring");
            }
        }
    }
}

/// Connects to the backend's socket; it may still be starting (as vhost's own connect, five
/// retries 100 ms apart while the connection is refused).
fn connect(path: &Path) -> Result<UnixStream, FsError> {
    let mut retries = 5;
    loop {
        match UnixStream::connect(path) {
            Ok(conn) => return Ok(conn),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused && retries > 0 => {
                retries -= 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(source) => {
                return Err(FsError::Connect {
                    path: path.to_owned(),
                    source,
                })
            }
        }
    }
}

/// Negotiates features with the backend: what the device offers the driver, and whether
/// vhost-user protocol features are on.
fn negotiate(frontend: &mut Frontend, path: &Path) -> Result<(u64, bool), FsError> {
    let backend_err = |step: &'static str| {
        move |source| FsError::Backend {
            path: path.to_owned(),
            step,
            source,
        }
    };
    frontend.set_owner().map_err(backend_err("SET_OWNER"))?;
    let backend_features = frontend
        .get_features()
        .map_err(backend_err("GET_FEATURES"))?;
    if backend_features & feature_bit(VIRTIO_F_VERSION_1) == 0 {
        return Err(FsError::Unsupported(
            path.to_owned(),
            "the backend does not offer VIRTIO_F_VERSION_1".into(),
        ));
    }
    let supported = feature_bit(VIRTIO_F_VERSION_1)
        | feature_bit(VIRTIO_RING_F_INDIRECT_DESC)
        | feature_bit(VIRTIO_RING_F_EVENT_IDX);
    let avail_features = backend_features & supported;
    let protocol_bit = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
    let protocol_features = backend_features & protocol_bit != 0;
    frontend
        .set_features(avail_features | (backend_features & protocol_bit))
        .map_err(backend_err("SET_FEATURES"))?;
    if protocol_features {
        let theirs = frontend
            .get_protocol_features()
            .map_err(backend_err("GET_PROTOCOL_FEATURES"))?;
        let ours = VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::REPLY_ACK;
        frontend
            .set_protocol_features(theirs & ours)
            .map_err(backend_err("SET_PROTOCOL_FEATURES"))?;
        if theirs.contains(VhostUserProtocolFeatures::REPLY_ACK) {
            // Every later request waits for the backend's verdict, so a backend that cannot
            // map guest memory or start a ring fails the activation rather than leaving the
            // guest's requests unanswered (the deadline bounds each wait).
            frontend.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
        }
        if theirs.contains(VhostUserProtocolFeatures::MQ) {
            let queues = frontend
                .get_queue_num()
                .map_err(backend_err("GET_QUEUE_NUM"))?;
            if queues < NUM_QUEUES as u64 {
                return Err(FsError::Unsupported(
                    path.to_owned(),
                    format!("the backend has {queues} queues, the device needs {NUM_QUEUES}"),
                ));
            }
        }
    }
    Ok((avail_features, protocol_features))
}

impl VirtioDevice for Fs {
    fn queue_progress(&self) -> Option<Vec<(u16, u16)>> {
        // The backend owns the rings; see `snapshot_blocker`.
        None
    }

    fn snapshot_blocker(&self) -> Option<String> {
        // The backend process holds the FUSE session (its inode and file-handle tables) and
        // the ring positions; a restored guest would talk to a backend that never saw its
        // FUSE_INIT. Carrying that over needs the backend's own migration (vhost-user
        // SET_DEVICE_STATE_FD, virtiofsd 1.11's --migration-mode), not implemented here.
        Some(format!(
            "virtio-fs {:?}: its vhost-user backend holds the share's FUSE session, which a snapshot cannot carry over yet",
            self.tag
        ))
    }

    fn device_type(&self) -> u32 {
        DEVICE_TYPE_FS
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn avail_features(&self) -> u64 {
        self.avail_features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config_space, offset, data);
    }

    fn activate(&mut self, active: ActiveQueues) -> Result<(), ActivateError> {
        if active.queues.len() != NUM_QUEUES {
            return Err(ActivateError::QueueCount {
                expected: NUM_QUEUES,
                got: active.queues.len(),
            });
        }
        let deadline = self.deadline()?;
        let setup = self.setup_backend(&active.queues, active.acked_features);
        if self.expired(deadline, "starting the rings") {
            return Err(ActivateError::Backend(std::io::Error::other(format!(
                "virtio-fs {:?}: vhost-user backend at {}: no answer within {} s while starting the rings",
                self.tag,
                self.socket_path.display(),
                self.timeout.as_secs_f64()
            ))));
        }
        setup?;
        self.metrics.activations.fetch_add(1, Ordering::Relaxed);
        tracing::info!(tag = %self.tag, "virtio-fs: activated");
        self.active = Some(Active {
            interrupt: active.interrupt,
        });
        Ok(())
    }

    fn reset(&mut self) {
        if self.active.take().is_some() {
            match self.deadline() {
                Ok(deadline) => {
                    self.stop_backend();
                    self.expired(deadline, "stopping the rings");
                }
                Err(e) => {
                    tracing::warn!(tag = %self.tag, error = %e, "virtio-fs: cannot stop the backend's rings")
                }
            }
        }
        for evt in &self.call_evts {
            let _ = evt.read();
        }
    }

    fn is_activated(&self) -> bool {
        self.active.is_some()
    }

    fn queue_events(&self) -> &[EventFd] {
        &self.kick_evts
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixListener;
    use std::time::Instant;

    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::FileOffset;

    use super::*;
    use crate::interrupt::NoInterrupt;
    use crate::virtio::fs::BACKEND_TIMEOUT;

    const GET_FEATURES: u32 = 1;
    /// vhost-user header flags of a reply: version 1, reply bit.
    const REPLY_FLAGS: u32 = 0x1 | 0x4;

    /// 1 MiB of file-backed guest memory, as a vhost-user backend needs.
    fn shared_memory() -> GuestMemory {
        let file = tempfile::tempfile().unwrap();
        file.set_len(1 << 20).unwrap();
        GuestMemory::from_ranges_with_files([(
            GuestAddress(0),
            1 << 20,
            Some(FileOffset::new(file, 0)),
        )])
        .unwrap()
    }

    const GET_PROTOCOL_FEATURES: u32 = 15;
    const SET_MEM_TABLE: u32 = 5;
    /// vhost-user header flag of a request that wants an acknowledgement.
    const NEED_REPLY: u32 = 0x8;
    /// VHOST_USER_F_PROTOCOL_FEATURES, a virtio feature bit of vhost-user.
    const PROTOCOL_FEATURES_BIT: u32 = 30;
    /// VHOST_USER_PROTOCOL_F_REPLY_ACK.
    const REPLY_ACK: u64 = 1 << 3;

    /// How a fake backend behaves.
    #[derive(Clone, Copy, PartialEq)]
    enum Fake {
        /// Reads every message, answers none.
        Silent,
        /// Answers GET_FEATURES (VERSION_1 only), nothing else.
        FeaturesOnly,
        /// Negotiates protocol features with REPLY_ACK, acknowledges every request that asks,
        /// and refuses SET_MEM_TABLE.
        RefusesMemTable,
    }

    fn reply(conn: &mut UnixStream, request: u32, value: u64) {
        let mut bytes = Vec::new();
        bytes.extend(request.to_le_bytes());
        bytes.extend(REPLY_FLAGS.to_le_bytes());
        bytes.extend(8u32.to_le_bytes());
        bytes.extend(value.to_le_bytes());
        conn.write_all(&bytes).unwrap();
    }

    /// A backend at `dir/backend.sock` behaving as `fake`.
    fn backend(dir: &Path, fake: Fake) -> PathBuf {
        let path = dir.join("backend.sock");
        let listener = UnixListener::bind(&path).unwrap();
        std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut hdr = [0u8; 12];
            while conn.read_exact(&mut hdr).is_ok() {
                let request = u32::from_le_bytes(hdr[..4].try_into().unwrap());
                let flags = u32::from_le_bytes(hdr[4..8].try_into().unwrap());
                let size = u32::from_le_bytes(hdr[8..].try_into().unwrap());
                let mut body = vec![0u8; size as usize];
                if conn.read_exact(&mut body).is_err() {
                    return;
                }
                let version_1 = feature_bit(VIRTIO_F_VERSION_1);
                match (fake, request) {
                    (Fake::Silent, _) => {}
                    (Fake::FeaturesOnly, GET_FEATURES) => reply(&mut conn, request, version_1),
                    (Fake::FeaturesOnly, _) => {}
                    (Fake::RefusesMemTable, GET_FEATURES) => reply(
                        &mut conn,
                        request,
                        version_1 | feature_bit(PROTOCOL_FEATURES_BIT),
                    ),
                    (Fake::RefusesMemTable, GET_PROTOCOL_FEATURES) => {
                        reply(&mut conn, request, REPLY_ACK)
                    }
                    (Fake::RefusesMemTable, _) if flags & NEED_REPLY != 0 => {
                        reply(&mut conn, request, u64::from(request == SET_MEM_TABLE))
                    }
                    (Fake::RefusesMemTable, _) => {}
                }
            }
        });
        path
    }

    fn activate(fs: &mut Fs, mem: &GuestMemory) -> Result<(), ActivateError> {
        let hiprio = MockSplitQueue::create(mem, GuestAddress(0x1000), 16);
        let requests = MockSplitQueue::create(mem, GuestAddress(0x4000), 16);
        fs.activate(ActiveQueues {
            mem: mem.clone(),
            queues: vec![
                hiprio.create_queue().unwrap(),
                requests.create_queue().unwrap(),
            ],
            interrupt: Arc::new(VirtioInterrupt::new(Arc::new(NoInterrupt))),
            acked_features: feature_bit(VIRTIO_F_VERSION_1),
        })
    }

    fn config(socket_path: PathBuf, timeout: Duration) -> FsConfig {
        FsConfig {
            tag: "share".into(),
            socket_path,
            timeout,
        }
    }

    #[test]
    fn test_a_backend_that_never_answers_fails_at_the_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let socket = backend(dir.path(), Fake::Silent);
        let started = Instant::now();
        let err = Fs::new(config(socket, Duration::from_millis(200)), shared_memory())
            .err()
            .expect("a silent backend is refused");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
        assert!(
            matches!(
                err,
                FsError::Timeout {
                    step: "GET_FEATURES",
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("no answer within 0.2 s"), "{err}");
    }

    #[test]
    fn test_a_missing_backend_is_a_connect_error_naming_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("nobody-listens.sock");
        let err = Fs::new(config(socket.clone(), BACKEND_TIMEOUT), shared_memory())
            .err()
            .expect("no backend");
        assert!(matches!(err, FsError::Connect { .. }), "{err:?}");
        assert!(
            err.to_string().contains(&*socket.to_string_lossy()),
            "{err}"
        );
    }

    #[test]
    fn test_reset_returns_when_the_backend_stops_answering() {
        let dir = tempfile::tempdir().unwrap();
        let socket = backend(dir.path(), Fake::FeaturesOnly);
        let mem = shared_memory();
        let mut fs = Fs::new(config(socket, Duration::from_millis(200)), mem.clone()).unwrap();
        assert_eq!(fs.avail_features(), feature_bit(VIRTIO_F_VERSION_1));
        activate(&mut fs, &mem).unwrap();
        assert!(fs.is_activated());
        // Stopping a ring waits for GET_VRING_BASE's reply, which never comes.
        let started = Instant::now();
        fs.reset();
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
        assert!(!fs.is_activated());
        assert_eq!(fs.metrics.backend_timeouts.load(Ordering::Relaxed), 1);
        assert!(fs.metrics.backend_errors.load(Ordering::Relaxed) >= 1);
    }

    #[test]
    fn test_a_backend_refusing_the_memory_table_fails_the_activation() {
        let dir = tempfile::tempdir().unwrap();
        let socket = backend(dir.path(), Fake::RefusesMemTable);
        let mem = shared_memory();
        let mut fs = Fs::new(config(socket, BACKEND_TIMEOUT), mem.clone()).unwrap();
        let started = Instant::now();
        let err = activate(&mut fs, &mem).expect_err("the backend refused SET_MEM_TABLE");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
        assert!(err.to_string().contains("SET_MEM_TABLE"), "{err}");
        assert!(!fs.is_activated());
        assert_eq!(fs.metrics.backend_errors.load(Ordering::Relaxed), 1);
        assert_eq!(fs.metrics.backend_timeouts.load(Ordering::Relaxed), 0);
    }
}
