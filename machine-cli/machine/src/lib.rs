//! The `machine` library: everything the `rmachine` CLI and the desktop app share.
#![forbid(unsafe_code)]

pub mod guest_link;
pub mod paths;
