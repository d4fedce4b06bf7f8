//! What the desktop's integration tests share: the `rmachine` binary they drive, and an X
//! display of their own.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The workspace's target profile folder (where the test binary's `deps/` is).
#[allow(dead_code)] // not every test drives the CLI
pub fn profile_dir() -> PathBuf {
    let app = PathBuf::from(env!("CARGO_BIN_EXE_rmachine-desktop"));
    app.parent().expect("binary has a folder").to_path_buf()
}

/// The `rmachine` binary beside the app, built when missing.
#[allow(dead_code)] // not every test drives the CLI
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

/// Starts `xvfb` on the first free display in `displays` (tests running at once take
/// different ranges), its output in `log`; returns it and the display's number once its
/// socket exists.
#[allow(dead_code)] // not every test opens a display
pub fn start_xvfb(xvfb: &Path, log: &Path, displays: std::ops::Range<u32>) -> (Child, u32) {
    let display = displays
        .into_iter()
        .find(|n| {
            !Path::new(&format!("/tmp/.X11-unix/X{n}")).exists()
                && !Path::new(&format!("/tmp/.X{n}-lock")).exists()
        })
        .expect("a free X display");
    let mut x = Command::new(xvfb)
        .args([
            format!(":{display}"),
            "-screen".into(),
            "0".into(),
            "1280x800x24".into(),
            "-nolisten".into(),
            "tcp".into(),
        ])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).expect("create the Xvfb log"))
        .spawn()
        .expect("start Xvfb");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !Path::new(&format!("/tmp/.X11-unix/X{display}")).exists() {
        if Instant::now() >= deadline {
            let _ = x.kill();
            let _ = x.wait();
            panic!(
                "Xvfb did not start: {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    (x, display)
}
