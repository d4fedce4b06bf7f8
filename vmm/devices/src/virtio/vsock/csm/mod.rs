//! The per-connection state machine of the vsock device.

mod connection;

pub use connection::{ConnState, Connection, TxError};
