//! The L1 kernel: Debian's stock amd64 kernel (the host's release, found through
//! `apt-cache depends linux-image-amd64`), downloaded with `apt-get download`, with the
//! modules the L1 init loads: kvm-amd and its dependencies, virtio-pci and virtio-blk for
//! the disks, and vhost-vsock (QEMU's vsock device in the benchmark). The kernel and those
//! modules are cached under `<cache>/kernel-<package>/`, with the package's sha256 beside
//! them; a cache that lacks a wanted module is extracted again.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

/// Modules the L1 init loads (their dependencies come first).
pub const WANTED_MODULES: &[&str] = &["kvm_amd", "virtio_pci", "virtio_blk", "vhost_vsock"];

/// Set this to a `linux-image-*-amd64` .deb to use it instead of asking apt.
pub const DEB_ENV: &str = "RMACHINE_NESTED_KERNEL_DEB";

/// An extracted L1 kernel.
#[derive(Debug, Clone)]
pub struct L1Kernel {
    /// The package it came from (`linux-image-6.1.0-57-amd64`).
    pub package: String,
    /// The kernel image.
    pub vmlinuz: PathBuf,
    /// Module files, in load order.
    pub modules: Vec<PathBuf>,
}

/// A module's name as the kernel spells it (`kvm-amd.ko` → `kvm_amd`).
pub fn module_name(file_name: &str) -> String {
    file_name.trim_end_matches(".ko").replace('-', "_")
}

/// The `depends=` list of a module's `.modinfo` section (NUL-separated `key=value` strings).
pub fn module_depends(ko: &[u8]) -> Vec<String> {
    ko.split(|&b| b == 0)
        .find_map(|s| s.strip_prefix(b"depends="))
        .map(|deps| {
            String::from_utf8_lossy(deps)
                .split(',')
                .filter(|d| !d.is_empty())
                .map(module_name)
                .collect()
        })
        .unwrap_or_default()
}

/// Load order for `wanted`: each module after the modules it depends on, each once.
/// `depends` gives a module's direct dependencies; an unknown module is an error.
pub fn load_order(
    wanted: &[&str],
    depends: &mut dyn FnMut(&str) -> Result<Vec<String>, String>,
) -> Result<Vec<String>, String> {
    fn visit(
        name: &str,
        depends: &mut dyn FnMut(&str) -> Result<Vec<String>, String>,
        done: &mut BTreeSet<String>,
        visiting: &mut BTreeSet<String>,
        order: &mut Vec<String>,
    ) -> Result<(), String> {
        if done.contains(name) {
            return Ok(());
        }
        if !visiting.insert(name.to_string()) {
            return Err(format!("module dependency cycle through {name}"));
        }
        for dep in depends(name)? {
            visit(&dep, depends, done, visiting, order)?;
        }
        visiting.remove(name);
        done.insert(name.to_string());
        order.push(name.to_string());
        Ok(())
    }
    let (mut done, mut visiting, mut order) = (BTreeSet::new(), BTreeSet::new(), Vec::new());
    for name in wanted {
        visit(
            &module_name(name),
            depends,
            &mut done,
            &mut visiting,
            &mut order,
        )?;
    }
    Ok(order)
}

/// Whether a `modules.order` file names every module of [`WANTED_MODULES`].
pub fn has_wanted_modules(order: &str) -> bool {
    let have: BTreeSet<&str> = order.lines().map(str::trim).collect();
    WANTED_MODULES
        .iter()
        .all(|m| have.contains(module_name(m).as_str()))
}

fn run(cmd: &mut Command, fix: &str) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}. {fix}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}{}\n{fix}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The package `linux-image-amd64` depends on, from `apt-cache depends` output.
pub fn parse_apt_depends(text: &str) -> Option<String> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("Depends:"))
        .map(str::trim)
        .find(|p| p.starts_with("linux-image-") && p.ends_with("-amd64"))
        .map(str::to_string)
}

fn find_files(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            find_files(&path, found);
        } else {
            found.push(path);
        }
    }
}

fn sha256_file(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    format!("{:x}", Sha256::digest(bytes))
}

/// The cached L1 kernel, downloading and extracting it on first use.
pub fn l1_kernel(cache: &Path) -> L1Kernel {
    let deb_override = std::env::var_os(DEB_ENV).map(PathBuf::from);
    let package = match &deb_override {
        Some(deb) => deb
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.split('_').next())
            .unwrap_or("custom")
            .to_string(),
        None => {
            let text = run(
                Command::new("apt-cache").args(["depends", "linux-image-amd64"]),
                "The nested test boots Debian's stock kernel as L1: run it on Debian (apt) or \
                 set RMACHINE_NESTED_KERNEL_DEB to a linux-image-*-amd64 .deb",
            );
            parse_apt_depends(&text).unwrap_or_else(|| {
                panic!(
                    "`apt-cache depends linux-image-amd64` names no linux-image-*-amd64 \
                     package:\n{text}\nRun `apt-get update`, or set {DEB_ENV}"
                )
            })
        }
    };
    let dir = cache.join(format!("kernel-{package}"));
    let order_file = dir.join("modules.order");
    let cached_order = std::fs::read_to_string(&order_file).unwrap_or_default();
    if !dir.join("complete").exists() || !has_wanted_modules(&cached_order) {
        extract(cache, &dir, &package, deb_override.as_deref());
    }
    let order = std::fs::read_to_string(&order_file).expect("read modules.order");
    L1Kernel {
        package,
        vmlinuz: dir.join("vmlinuz"),
        modules: order
            .lines()
            .map(|m| dir.join("modules").join(format!("{m}.ko")))
            .collect(),
    }
}

fn extract(cache: &Path, dir: &Path, package: &str, deb: Option<&Path>) {
    let work = cache.join(format!("tmp-kernel-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).expect("create the kernel work folder");
    let deb = match deb {
        Some(deb) => deb.to_path_buf(),
        None => {
            eprintln!("nested: downloading {package} (apt-get download)");
            run(
                Command::new("apt-get")
                    .args(["download", package])
                    .current_dir(&work),
                "Downloading the L1 kernel needs the host's apt sources and network: run \
                 `apt-get update`, or set RMACHINE_NESTED_KERNEL_DEB to the .deb",
            );
            let mut files = Vec::new();
            find_files(&work, &mut files);
            files
                .into_iter()
                .find(|f| f.extension().is_some_and(|e| e == "deb"))
                .expect("apt-get download left a .deb")
        }
    };
    let root = work.join("root");
    run(
        Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root),
        "Install dpkg (Debian's dpkg-deb extracts the kernel package)",
    );
    let mut files = Vec::new();
    find_files(&root, &mut files);
    let vmlinuz = files
        .iter()
        .find(|f| {
            f.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz-"))
        })
        .unwrap_or_else(|| panic!("{} has no boot/vmlinuz-*", deb.display()));
    let mut by_name: BTreeMap<String, PathBuf> = BTreeMap::new();
    for f in &files {
        if let Some(name) = f.file_name().and_then(|n| n.to_str()) {
            if name.ends_with(".ko") {
                by_name.insert(module_name(name), f.clone());
            } else if name.ends_with(".ko.xz") || name.ends_with(".ko.zst") {
                panic!(
                    "{} has compressed modules ({name}); the nested harness reads plain .ko files",
                    deb.display()
                );
            }
        }
    }
    let order = load_order(WANTED_MODULES, &mut |name| {
        let path = by_name
            .get(name)
            .ok_or_else(|| format!("{} has no module {name}", deb.display()))?;
        let bytes = std::fs::read(path).map_err(|e| format!("read {}: {e}", path.display()))?;
        Ok(module_depends(&bytes))
    })
    .unwrap_or_else(|e| panic!("{e}"));

    let staging = cache.join(format!("tmp-kernel-out-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(staging.join("modules")).expect("create the kernel cache");
    std::fs::copy(vmlinuz, staging.join("vmlinuz")).expect("copy vmlinuz");
    for name in &order {
        std::fs::copy(
            &by_name[name],
            staging.join("modules").join(format!("{name}.ko")),
        )
        .expect("copy a module");
    }
    std::fs::write(staging.join("modules.order"), order.join("\n") + "\n")
        .expect("write modules.order");
    std::fs::write(staging.join("deb.sha256"), sha256_file(&deb) + "\n").expect("write deb.sha256");
    std::fs::write(staging.join("complete"), b"").expect("mark the kernel cache complete");
    let _ = std::fs::remove_dir_all(dir);
    std::fs::rename(&staging, dir).expect("move the kernel into the cache");
    let _ = std::fs::remove_dir_all(&work);
    eprintln!(
        "nested: cached {package} in {} (modules: {})",
        dir.display(),
        order.join(" ")
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_module_depends_from_modinfo() {
        let ko = b"\x7fELF junk\0license=GPL\0depends=kvm,ccp\0retpoline=Y\0name=kvm_amd\0";
        assert_eq!(module_depends(ko), ["kvm", "ccp"]);
        assert!(module_depends(b"\0depends=\0name=ccp\0").is_empty());
        assert!(module_depends(b"no modinfo").is_empty());
        assert_eq!(
            module_depends(b"\0depends=virtio_pci-legacy\0"),
            ["virtio_pci_legacy"]
        );
    }

    #[test]
    fn test_load_order_puts_dependencies_first_once() {
        let deps: BTreeMap<&str, Vec<&str>> = [
            ("kvm_amd", vec!["kvm", "ccp"]),
            ("kvm", vec!["irqbypass"]),
            ("ccp", vec![]),
            ("irqbypass", vec![]),
            ("virtio_blk", vec!["virtio", "virtio_ring"]),
            ("virtio", vec!["virtio_ring"]),
            ("virtio_ring", vec![]),
        ]
        .into_iter()
        .collect();
        let mut lookup = |name: &str| {
            deps.get(name)
                .map(|d| d.iter().map(|s| s.to_string()).collect())
                .ok_or_else(|| format!("no module {name}"))
        };
        let order = load_order(&["kvm-amd", "virtio_blk"], &mut lookup).unwrap();
        assert_eq!(
            order,
            [
                "irqbypass",
                "kvm",
                "ccp",
                "kvm_amd",
                "virtio_ring",
                "virtio",
                "virtio_blk"
            ]
        );
        assert!(load_order(&["nope"], &mut lookup)
            .unwrap_err()
            .contains("nope"));
        let mut cyclic = |name: &str| Ok(vec![if name == "a" { "b" } else { "a" }.to_string()]);
        assert!(load_order(&["a"], &mut cyclic)
            .unwrap_err()
            .contains("cycle"));
    }

    #[test]
    fn test_has_wanted_modules() {
        let all = "irqbypass\nkvm\nccp\nkvm_amd\nvirtio_pci\nvirtio_blk\nvhost\nvhost_vsock\n";
        assert!(has_wanted_modules(all));
        assert!(!has_wanted_modules(
            "kvm\nkvm_amd\nvirtio_pci\nvirtio_blk\n"
        ));
        assert!(!has_wanted_modules(""));
    }

    #[test]
    fn test_parse_apt_depends() {
        let text = "linux-image-amd64\n  Depends: linux-image-6.1.0-57-amd64\n";
        assert_eq!(
            parse_apt_depends(text).as_deref(),
            Some("linux-image-6.1.0-57-amd64")
        );
        assert_eq!(parse_apt_depends("linux-image-amd64\n"), None);
    }
}
