//! What the desktop's integration tests share: the `rmachine` binary they drive.

use std::path::PathBuf;
use std::process::Command;

/// The workspace's target profile folder (where the test binary's `deps/` is).
pub fn profile_dir() -> PathBuf {
    let app = PathBuf::from(env!("CARGO_BIN_EXE_rmachine-desktop"));
    app.parent().expect("binary has a folder").to_path_buf()
}

/// The `rmachine` binary beside the app, built when missing.
pub fn rmachine_bin() -> PathBuf {
    let bin = profile_dir().join("rmachine");
    if !bin.is_file() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-p", "rmachine"])
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
            .status()
            .expect("run cargo build -p rmachine");
        assert!(status.success(), "cargo build -p rmachine failed");
    }
    assert!(
        bin.is_file(),
        "{} missing after cargo build -p rmachine",
        bin.display()
    );
    bin
}
