//! `rmachine-vmm`: a KVM microVM monitor.
//!
//! [`config`] is the one JSON document the VMM starts from; [`builder`] turns it into a running
//! VM (guest [`memory`], kernel loading and [`boot`] state, the [`device_manager`], one thread
//! per vCPU from [`vcpu`]); [`api`] serves the control API on a unix socket.

pub mod api;
pub mod boot;
pub mod builder;
pub mod config;
pub mod device_manager;
pub mod jail;
pub mod layout;
pub mod memory;
pub mod preopen;
pub mod seccomp;
pub mod snapshot;
pub mod tap;
pub mod vcpu;
