//! The `machine` library: everything the `rmachine` CLI and the desktop app share.
#![forbid(unsafe_code)]

pub mod accel;
pub mod config;
pub mod copy;
pub mod docker_context;
pub mod driver;
pub mod engine_settings;
pub mod exec;
pub mod forward;
pub mod guest_link;
pub mod host_tools;
pub mod hostagent_api;
pub mod image_registry;
pub mod image_store;
pub mod lifecycle;
pub mod network;
pub mod paths;
pub mod platform;
pub mod qemu;
pub mod saved_state;
pub mod ssh;
pub mod state;
pub mod store;
pub mod sys;
pub mod usage;
pub mod version;
pub mod vmm_config;
