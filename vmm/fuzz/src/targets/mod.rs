//! The fuzz targets, one module each; `fuzz_targets/<name>.rs` calls its `run`.

pub mod blk_request;
pub mod net_frame;
pub mod vsock_packet;
