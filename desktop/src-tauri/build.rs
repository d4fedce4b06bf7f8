//! Tauri's build step, plus a digest of the UI files: the UI is embedded when the crate
//! compiles, so a change to `desktop/ui` must recompile it (the digest is an env var the
//! crate reads, which cargo tracks).

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::Path;

fn main() {
    let ui = Path::new("../ui");
    println!("cargo:rerun-if-changed=../ui");
    let mut hasher = DefaultHasher::new();
    let mut files: Vec<_> = std::fs::read_dir(ui)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    for f in files {
        println!("cargo:rerun-if-changed={}", f.display());
        f.hash(&mut hasher);
        std::fs::read(&f).unwrap_or_default().hash(&mut hasher);
    }
    println!(
        "cargo:rustc-env=RMACHINE_UI_DIGEST={:016x}",
        hasher.finish()
    );
    tauri_build::build()
}
