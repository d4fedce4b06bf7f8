//! Building what runs inside L1: rmachine-vmm (release, gnu: its shared libraries are copied
//! into the initramfs) and the static `rmachine-nested-client` (release, musl).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// The musl target of the static client.
pub const MUSL_TARGET: &str = "x86_64-unknown-linux-musl";

/// The built binaries.
pub struct Tools {
    /// `rmachine-vmm`, dynamically linked.
    pub vmm: PathBuf,
    /// `rmachine-nested-client`, static.
    pub client: PathBuf,
}

/// The workspace root (`rmachine-e2e` lives in `<workspace>/tests`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the e2e crate lives in <workspace>/tests")
        .to_path_buf()
}

/// Cargo's target folder (`CARGO_TARGET_DIR`, relative to the workspace, or `target`).
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => workspace_root().join(dir),
        None => workspace_root().join("target"),
    }
}

/// `cargo build --release <args>` in the workspace; fails with `fix` in the message.
pub fn cargo_build(args: &[&str], fix: &str) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let started = Instant::now();
    let out = Command::new(&cargo)
        .args(["build", "--release"])
        .args(args)
        .current_dir(workspace_root())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cargo}: {e}"));
    assert!(
        out.status.success(),
        "cargo build --release {} failed ({}). {fix}\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "nested: cargo build --release {} took {:.1}s",
        args.join(" "),
        started.elapsed().as_secs_f64()
    );
}

/// Builds rmachine-vmm and the nested client.
pub fn tools() -> Tools {
    cargo_build(&["-p", "rmachine-vmm"], "");
    cargo_build(
        &["-p", "rmachine-nested-client", "--target", MUSL_TARGET],
        "The client runs inside L1 and must be static: `rustup target add x86_64-unknown-linux-musl`",
    );
    let target = target_dir();
    Tools {
        vmm: target.join("release/rmachine-vmm"),
        client: target
            .join(MUSL_TARGET)
            .join("release/rmachine-nested-client"),
    }
}
