//! Shared folders where virtiofsd does not run (macOS, Windows): none yet. A machine with
//! shares boots without them and says so in its warnings.

use rmachine_machine::paths::Paths;
use rmachine_machine::qemu::QemuShare;
use rmachine_machine::store::Machine;
use rmachine_protocol::config_disk::Mount;

use super::Daemon;

/// The warning a machine with shared folders shows on this platform.
pub(crate) const UNSUPPORTED: &str =
    "shared folders are not available on this platform yet (virtiofsd runs on Linux only): the machine runs without them";

pub(crate) async fn start(
    machine: &Machine,
    _paths: &Paths,
) -> anyhow::Result<(Vec<Daemon>, Vec<QemuShare>, Vec<Mount>)> {
    if !machine.spec.mounts.is_empty() {
        tracing::warn!("{UNSUPPORTED}");
    }
    Ok((Vec::new(), Vec::new(), Vec::new()))
}
