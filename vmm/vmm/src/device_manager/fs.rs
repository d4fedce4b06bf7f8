//! Creation of virtio-fs devices: each connects to its vhost-user backend at creation, so a
//! backend that is not listening is an error at start, naming the field.

use std::sync::{Arc, Mutex};

use devices::virtio::fs::{Fs, FsConfig as DeviceFsConfig, BACKEND_TIMEOUT};
use devices::GuestMemory;

use super::{DeviceError, NewDevice};
use crate::config::FsConfig;

/// Connects `filesystems[index]` to its backend and creates the device.
pub(super) fn create_fs(
    index: usize,
    cfg: &FsConfig,
    mem: &GuestMemory,
) -> Result<NewDevice, DeviceError> {
    let fs = Fs::new(
        DeviceFsConfig {
            tag: cfg.tag.clone(),
            socket_path: cfg.socket_path.clone(),
            timeout: BACKEND_TIMEOUT,
        },
        mem.clone(),
    )
    .map_err(|e| DeviceError::Fs(format!("filesystems[{index}]"), e))?;
    let metrics = fs.metrics();
    let fs = Arc::new(Mutex::new(fs));
    Ok((format!("fs-{}", cfg.tag), "fs", fs.clone(), fs, metrics))
}
