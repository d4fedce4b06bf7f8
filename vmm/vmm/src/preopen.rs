//! What the VMM creates or opens on the host by itself, done first: the API socket, the vsock
//! device's listening socket, the serial log and the TAP device. Their paths and the host's
//! network are out of reach once the VMM is jailed, and a socket created here, by the process
//! that starts the VMM, belongs to it as without a jail, at the path the host side expects.
//! Everything else (kernel, disks, backends' sockets, `/dev/kvm`) is opened by path later, in
//! the jail when there is one.

use std::fs::{File, OpenOptions};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

use devices::virtio::vsock::unix::bind_listener;
use devices::virtio::vsock::VsockError;

use crate::config::{NetBackendKind, ResolvedConfig};
use crate::tap::open_tap;

/// Errors of opening; each names the field.
#[derive(Debug, thiserror::Error)]
pub enum PreopenError {
    /// The API socket could not be bound.
    #[error("api_socket: cannot listen on {0}")]
    Api(PathBuf, #[source] std::io::Error),
    /// The vsock socket could not be bound.
    #[error("vsock.uds_path: cannot listen")]
    Vsock(#[source] VsockError),
    /// The serial log could not be opened.
    #[error("cannot open serial log {0}")]
    SerialLog(String, #[source] std::io::Error),
    /// The TAP device could not be opened.
    #[error("net.tap: cannot open {0:?}")]
    Tap(String, #[source] std::io::Error),
}

/// The opened files and sockets, taken by the parts that use them.
#[derive(Debug, Default)]
pub struct Preopened {
    /// The control API's listening socket (`api_socket`).
    pub api: Option<UnixListener>,
    /// The vsock device's listening socket (`vsock.uds_path`).
    pub vsock: Option<UnixListener>,
    /// The serial console's log (`serial.log_path`).
    pub serial_log: Option<File>,
    /// The TAP device (`net.tap`), attached to the interface in the host's network.
    pub tap: Option<File>,
}

impl Preopened {
    /// Opens what `config` names.
    pub fn open(config: &ResolvedConfig) -> Result<Self, PreopenError> {
        let c = &config.config;
        let mut opened = Preopened::default();
        if let Some(path) = &c.api_socket {
            opened.api = Some(bind_api(path)?);
        }
        if let Some(vsock) = &c.vsock {
            opened.vsock = Some(bind_listener(&vsock.uds_path).map_err(PreopenError::Vsock)?);
        }
        if let Some(path) = c.serial.as_ref().and_then(|s| s.log_path.as_ref()) {
            let log = OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| PreopenError::SerialLog(path.display().to_string(), e))?;
            opened.serial_log = Some(log);
        }
        if let Some(net) = &c.net {
            if net.backend == NetBackendKind::Tap {
                let name = net.tap.clone().unwrap_or_default();
                opened.tap = Some(open_tap(&name).map_err(|e| PreopenError::Tap(name, e))?);
            }
        }
        Ok(opened)
    }
}

/// Binds the API socket at `path`, replacing a stale socket file.
pub fn bind_api(path: &Path) -> Result<UnixListener, PreopenError> {
    let _ = std::fs::remove_file(path);
    let listener =
        UnixListener::bind(path).map_err(|e| PreopenError::Api(path.to_path_buf(), e))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| PreopenError::Api(path.to_path_buf(), e))?;
    Ok(listener)
}
