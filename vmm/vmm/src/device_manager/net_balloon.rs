//! Creation of the net and balloon devices: the net device's backend (TAP or passt) and the
//! balloon's discarder of guest memory.

use std::sync::{Arc, Mutex};

use devices::virtio::balloon::{Balloon, BalloonConfig as DeviceBalloonConfig};
use devices::virtio::net::{
    Net, NetBackend, NetConfig as DeviceNetConfig, StreamBackend, TapBackend,
};
use devices::GuestMemory;

use super::{DeviceError, NewDevice};
use crate::config::{BalloonConfig, NetBackendKind, NetConfig};
use crate::memory::MadviseDiscard;
use crate::tap::open_tap;

/// Opens the backend of `cfg` (a TAP already opened as `tap`, if given) and creates the net
/// device.
pub(super) fn create_net(
    id: &str,
    cfg: &NetConfig,
    tap: Option<std::fs::File>,
) -> Result<NewDevice, DeviceError> {
    let mac = cfg
        .mac_bytes()
        .map_err(|e| DeviceError::NetBackend("net.mac".into(), std::io::Error::other(e)))?;
    let backend: Box<dyn NetBackend> = match cfg.backend {
        NetBackendKind::Tap => {
            let name = cfg.tap.clone().unwrap_or_default();
            let file = match tap {
                Some(file) => Ok(file),
                None => open_tap(&name),
            };
            let tap = file
                .and_then(|file| TapBackend::new(file, name.clone()))
                .map_err(|e| {
                    DeviceError::NetBackend(format!("net.tap: cannot open {name:?}"), e)
                })?;
            Box::new(tap)
        }
        NetBackendKind::Passt => {
            let path = cfg.socket.clone().unwrap_or_default();
            let stream = StreamBackend::connect_passt(&path).map_err(|e| {
                DeviceError::NetBackend(
                    format!("net.socket: cannot connect to passt at {}", path.display()),
                    e,
                )
            })?;
            Box::new(stream)
        }
    };
    tracing::info!(backend = backend.kind(), "net device ready");
    let net = Net::new(DeviceNetConfig { mac }, backend).map_err(DeviceError::Net)?;
    let metrics = net.metrics();
    let net = Arc::new(Mutex::new(net));
    Ok((id.to_string(), "net", net.clone(), net, metrics))
}

/// Creates the balloon device, discarding pages of `mem`.
pub(super) fn create_balloon(
    cfg: &BalloonConfig,
    mem: &GuestMemory,
) -> Result<NewDevice, DeviceError> {
    let balloon = Balloon::new(
        DeviceBalloonConfig {
            free_page_reporting: cfg.free_page_reporting,
            deflate_on_oom: cfg.deflate_on_oom,
        },
        Arc::new(MadviseDiscard::new(mem.clone())),
    )
    .map_err(DeviceError::Balloon)?;
    let metrics = balloon.metrics();
    let balloon = Arc::new(Mutex::new(balloon));
    Ok((
        "balloon".to_string(),
        "balloon",
        balloon.clone(),
        balloon,
        metrics,
    ))
}
