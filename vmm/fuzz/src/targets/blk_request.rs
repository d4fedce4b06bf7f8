//! virtio-blk: descriptor chains from the guest through the transport, the queue processing of
//! `Block`, the request parser and its execution against a 64 KiB (plus a partial sector) disk.
//! Setup byte: bit 0 opens the disk read-only.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use crate::{Reader, Session};
use devices::metrics::MetricsSource;
use devices::virtio::block::{Block, BlockConfig};

/// Disk size: 128 sectors and a trailing partial one, which is not exposed.
const DISK_SIZE: u64 = 64 * 1024 + 100;

/// An unlinked image file, reopened through `/proc/self/fd` so nothing is left behind.
fn disk() -> &'static (File, PathBuf) {
    static DISK: OnceLock<(File, PathBuf)> = OnceLock::new();
    DISK.get_or_init(|| {
        let dir = std::env::temp_dir();
        let path = dir.join(format!("rmachine-fuzz-blk-{}.img", std::process::id()));
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .expect("create the disk image");
        std::fs::remove_file(&path).expect("unlink the disk image");
        let proc_path = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
        (file, proc_path)
    })
}

/// Runs one input; returns the device's counters as JSON.
pub fn run(data: &[u8]) -> String {
    let mut r = Reader::new(data);
    let read_only = r.u8() & 1 != 0;
    let (file, path) = disk();
    // Every run starts from an all-zero disk.
    file.set_len(0).expect("truncate the disk");
    file.set_len(DISK_SIZE).expect("size the disk");
    let block = Block::new(BlockConfig {
        id: "fuzz-disk".to_string(),
        path: path.clone(),
        read_only,
    })
    .expect("open the disk");
    let metrics = block.metrics();
    let mut session = Session::new(Arc::new(Mutex::new(block)), &mut r);
    session.drive(&mut r, |_, _, _| {});
    metrics.snapshot().to_string()
}
