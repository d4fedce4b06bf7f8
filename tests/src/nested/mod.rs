//! The nested-KVM harness, shared by the end-to-end test (`tests/tests/nested_vmm`) and the
//! nested benchmark (`benches/src/bin/nested.rs`).
//!
//! This machine's `/dev/kvm` (PVM) cannot run a stock Linux kernel, but QEMU's software
//! emulation (TCG) emulates AMD SVM, so a Linux L1 VM under TCG gets a working `/dev/kvm`
//! from kvm-amd, and rmachine-vmm (or QEMU with `-enable-kvm`) runs the real guest (L2)
//! inside it.
//!
//! - [`build`]: builds rmachine-vmm (gnu, its shared libraries go along) and the static
//!   `rmachine-nested-client` (musl) that runs beside it in L1.
//! - [`kernel`]: Debian's stock kernel for L1 and the modules its init loads.
//! - [`initramfs`]: L1's initramfs (busybox, an init script, the tools, the guest kernel and
//!   configuration files), written with [`cpio`] and cached by content hash.
//! - [`l2`]: the guest as rmachine-vmm and QEMU run it inside L1.
//! - [`l1`]: L1's QEMU command line, running it and reading its console.
//!
//! Every console line of L1 meant for the host starts with `NESTED `.

pub mod aarch64;
pub mod build;
pub mod cpio;
pub mod initramfs;
pub mod kernel;
pub mod l1;
pub mod l2;

/// The setup every L1 init sources first: mounts, `up`/`fail`, the modules, `/dev/kvm` and
/// the disks by serial (`/etc/nested/l1-setup.sh` in the initramfs).
pub const L1_SETUP: &str = include_str!("l1-setup.sh");
/// PID 1 of the end-to-end test's L1.
pub const L1_INIT_TEST: &str = include_str!("l1-init.sh");
/// PID 1 of the benchmark's L1.
pub const L1_INIT_BENCH: &str = include_str!("l1-bench.sh");
