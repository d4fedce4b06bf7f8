//! Tauri's build step, plus a digest of the UI files: the UI is embedded when the crate
//! compiles, so a change to any file under `desktop/ui` must recompile it (the digest is an env var the
//! crate reads, which cargo tracks).

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};

/// Every file under `dir`, depth first.
fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        if path.is_dir() {
            println!("cargo:rerun-if-changed={}", path.display());
            files(&path, out);
        } else {
            out.push(path);
        }
    }
}

fn main() {
    let ui = Path::new("../ui");
    println!("cargo:rerun-if-changed=../ui");
    let mut hasher = DefaultHasher::new();
    let mut all = Vec::new();
    files(ui, &mut all);
    all.sort();
    for f in all {
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
