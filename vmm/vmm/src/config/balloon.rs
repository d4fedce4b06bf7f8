//! The `balloon` section of the boot document.

use serde::{Deserialize, Serialize};

/// The virtio-balloon device: `{"free_page_reporting": true}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct BalloonConfig {
    /// Let the guest report free memory, which the VMM gives back to the host. Default: false.
    #[serde(default)]
    pub free_page_reporting: bool,
    /// Let the guest take balloon pages back when it runs out of memory. Default: false.
    #[serde(default)]
    pub deflate_on_oom: bool,
    /// virtio-mmio slot. Default: the next free slot.
    pub slot: Option<u8>,
}
