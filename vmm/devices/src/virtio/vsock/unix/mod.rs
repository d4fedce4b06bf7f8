//! The hybrid unix-socket backend of the vsock device.

mod muxer;

pub use muxer::{bind_listener, FdOp, VsockMuxer, LISTENER_TOKEN, MAX_PENDING_CONTROL, TOKEN_BASE};
