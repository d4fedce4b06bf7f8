//! The nested-KVM harness for rmachine-vmm on aarch64.
//!
//! No arm64 hardware here, but QEMU's software emulation gives an arm64 L1 with EL2
//! (`-M virt,virtualization=on,gic-version=3 -cpu max`): the project's own arm64 guest kernel
//! boots there in VHE mode with a working `/dev/kvm` (guest/image/kernel/ARM64.md, "Nested
//! KVM"), and rmachine-vmm, built static for `aarch64-unknown-linux-musl`, runs L2 on it.
//!
//! That kernel has no initrd support, so L1's root is a read-only erofs image on virtio-blk
//! (busybox, the init script, rmachine-vmm and what L2 boots), made with `mkfs.erofs` and
//! cached by content hash under `~/.cache/rmachine/nested-aarch64/`. L1's console is read with
//! [`super::l1::run`]: every line for the host starts with `NESTED `, the guest's console is
//! prefixed `L2| ` and the VMM's log `VMM| `.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};

use super::build;

/// The Rust target of what runs in L1 (static: L1 has no libc).
pub const TARGET: &str = "aarch64-unknown-linux-musl";
/// The QEMU that runs L1.
pub const QEMU: &str = "qemu-system-aarch64";
/// PID 1 of L1.
pub const L1_INIT: &str = include_str!("aarch64-l1-init.sh");
/// PID 1 of L1 for the arm64 guest image (rmachine-vmm and the nested client).
pub const L1_AGENT_INIT: &str = include_str!("aarch64-l1-agent.sh");
/// PID 1 of the test guest (L2).
pub const L2_INIT: &str = include_str!("aarch64-l2-init.sh");
/// L1's RAM in MiB for the test guest.
pub const L1_MEMORY_MIB: u64 = 1024;
/// L1's vCPUs (TCG runs one host thread per vCPU).
pub const L1_VCPUS: u8 = 2;
/// Busybox applets linked in both roots.
const APPLETS: &[&str] = &[
    "sh", "mount", "cat", "cut", "head", "tail", "tr", "grep", "sed", "tee", "sleep", "uname",
    "dmesg", "devmem", "poweroff", "killall", "ls", "echo", "ln",
];

/// Fails with the fix when QEMU for arm64 is missing.
pub fn require_qemu() {
    let ok = Command::new(QEMU)
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "{QEMU} is missing: install the Debian package qemu-system-arm (installers/linux/arm64.sh \
         does; the aarch64 nested test runs L1 under QEMU's software emulation)"
    );
}

/// Builds rmachine-vmm for aarch64 (static, release) and returns its path.
pub fn build_vmm() -> PathBuf {
    build::cargo_build(
        &["-p", "rmachine-vmm", "--target", TARGET],
        "rmachine-vmm runs inside the arm64 L1 and must be static: \
         `rustup target add aarch64-unknown-linux-musl` (installers/linux/arm64.sh does)",
    );
    build::target_dir()
        .join(TARGET)
        .join("release/rmachine-vmm")
}

/// Builds `rmachine-nested-client` for aarch64 (static, release) and returns its path.
pub fn build_client() -> PathBuf {
    build::cargo_build(
        &["-p", "rmachine-nested-client", "--target", TARGET],
        "The client runs inside the arm64 L1 and must be static: \
         `rustup target add aarch64-unknown-linux-musl`",
    );
    build::target_dir()
        .join(TARGET)
        .join("release/rmachine-nested-client")
}

/// One member of a root filesystem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Member {
    /// A folder.
    Dir,
    /// A file with these contents and permission bits.
    Bytes(Vec<u8>, u32),
    /// A copy of a host file, with these permission bits.
    Copy(PathBuf, u32),
    /// A symbolic link to this target.
    Symlink(String),
}

/// A root filesystem: (path inside, member), parents first.
pub type Tree = Vec<(String, Member)>;

/// The busybox base both roots share: `/bin/busybox` with its applets, the usual folders.
pub fn busybox_tree(busybox: &Path) -> Tree {
    let mut tree: Tree = ["bin", "etc", "proc", "sys", "dev", "tmp", "run"]
        .iter()
        .map(|d| (d.to_string(), Member::Dir))
        .collect();
    tree.push((
        "bin/busybox".into(),
        Member::Copy(busybox.to_path_buf(), 0o755),
    ));
    for applet in APPLETS {
        tree.push((format!("bin/{applet}"), Member::Symlink("busybox".into())));
    }
    tree
}

/// The content hash of a tree (paths, kinds, contents), naming its cached image.
pub fn tree_hash(tree: &Tree) -> Result<String, String> {
    let mut h = Sha256::new();
    for (path, member) in tree {
        h.update(path.as_bytes());
        h.update([0]);
        match member {
            Member::Dir => h.update(b"d"),
            Member::Bytes(data, mode) => {
                h.update(format!("f{mode:o}:{}:", data.len()));
                h.update(data);
            }
            Member::Copy(src, mode) => {
                let data = std::fs::read(src).map_err(|e| format!("{}: {e}", src.display()))?;
                h.update(format!("f{mode:o}:{}:", data.len()));
                h.update(&data);
            }
            Member::Symlink(target) => h.update(format!("l{target}")),
        }
        h.update([0]);
    }
    Ok(hex_of(&h.finalize()[..8]))
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes `tree` under `dir` (which must not exist).
fn materialize(tree: &Tree, dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let io = |what: &Path, e: std::io::Error| format!("{}: {e}", what.display());
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    for (path, member) in tree {
        let at = dir.join(path);
        if let Some(parent) = at.parent() {
            std::fs::create_dir_all(parent).map_err(|e| io(parent, e))?;
        }
        match member {
            Member::Dir => std::fs::create_dir_all(&at).map_err(|e| io(&at, e))?,
            Member::Bytes(data, mode) => {
                std::fs::write(&at, data).map_err(|e| io(&at, e))?;
                std::fs::set_permissions(&at, std::fs::Permissions::from_mode(*mode))
                    .map_err(|e| io(&at, e))?;
            }
            Member::Copy(src, mode) => {
                std::fs::copy(src, &at).map_err(|e| io(src, e))?;
                std::fs::set_permissions(&at, std::fs::Permissions::from_mode(*mode))
                    .map_err(|e| io(&at, e))?;
            }
            Member::Symlink(target) => {
                std::os::unix::fs::symlink(target, &at).map_err(|e| io(&at, e))?
            }
        }
    }
    Ok(())
}

/// An erofs image of `tree`, cached as `<cache>/<name>-<hash>.erofs`.
pub fn erofs(cache: &Path, name: &str, tree: &Tree) -> PathBuf {
    let hash = tree_hash(tree).unwrap_or_else(|e| panic!("{name}: {e}"));
    let image = cache.join(format!("{name}-{hash}.erofs"));
    if image.is_file() {
        return image;
    }
    std::fs::create_dir_all(cache).expect("create the nested-aarch64 cache");
    let staging = cache.join(format!("{name}-{hash}.tree"));
    let _ = std::fs::remove_dir_all(&staging);
    materialize(tree, &staging).unwrap_or_else(|e| panic!("{name}: {e}"));
    let partial = image.with_extension("partial");
    let out = Command::new("mkfs.erofs")
        .args(["--quiet", "--all-root", "-T0"])
        .arg(&partial)
        .arg(&staging)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run mkfs.erofs ({e}): install the Debian package erofs-utils")
        });
    assert!(
        out.status.success(),
        "mkfs.erofs for {name} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::rename(&partial, &image).expect("keep the erofs image");
    let _ = std::fs::remove_dir_all(&staging);
    image
}

/// A disk of L1: a raw file on virtio-blk.
#[derive(Debug, Clone)]
pub struct Disk {
    /// The host file.
    pub path: PathBuf,
    /// Read-only for L1.
    pub read_only: bool,
    /// The serial L1 finds it by, if any.
    pub serial: Option<String>,
}

/// L1's QEMU command line: `memory_mib` of RAM, the disks in order on virtio-mmio transports
/// 0.. (so L1 names them vda, vdb, …; the first is L1's root), `append_extra` on L1's kernel
/// command line.
pub fn command(kernel: &Path, disks: &[Disk], memory_mib: u64, append_extra: &str) -> Command {
    let mut cmd = Command::new(QEMU);
    cmd.args(["-M", "virt,virtualization=on,gic-version=3"])
        .args(["-accel", "tcg", "-cpu", "max,pauth-impdef=on"])
        .args(["-smp", &L1_VCPUS.to_string()])
        .args(["-m", &memory_mib.to_string()])
        .args(["-nodefaults", "-no-user-config", "-nographic"])
        .args(["-serial", "stdio", "-no-reboot"]);
    for (i, disk) in disks.iter().enumerate() {
        let ro = if disk.read_only { ",readonly=on" } else { "" };
        cmd.arg("-drive").arg(format!(
            "id=d{i},file={},format=raw,if=none,cache=unsafe{ro}",
            disk.path.display()
        ));
        // Without `bus=`, QEMU's virt gives the first device the highest-addressed transport.
        let serial = disk
            .serial
            .as_ref()
            .map(|s| format!(",serial={s}"))
            .unwrap_or_default();
        cmd.arg("-device").arg(format!(
            "virtio-blk-device,drive=d{i},bus=virtio-mmio-bus.{i}{serial}"
        ));
    }
    cmd.arg("-kernel").arg(kernel).arg("-append").arg(
        format!("console=ttyAMA0 root=/dev/vda ro rootfstype=erofs init=/init panic=-1 quiet {append_extra}")
            .trim_end(),
    );
    cmd
}

/// Where the console logs of the aarch64 tests are kept (`<target>/nested-aarch64/`).
pub fn log_dir(target_dir: &Path) -> PathBuf {
    target_dir.join("nested-aarch64")
}

/// Host time (seconds since QEMU started) of the first line containing `needle`.
pub fn first_line_time(lines: &[super::l1::Line], needle: &str) -> Option<f64> {
    lines
        .iter()
        .find(|(_, l)| l.contains(needle))
        .map(|(t, _)| *t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_tree_hash_follows_contents() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, "one").unwrap();
        let tree = |mode| -> Tree {
            vec![
                ("bin".into(), Member::Dir),
                ("bin/f".into(), Member::Copy(file.clone(), mode)),
                ("bin/l".into(), Member::Symlink("f".into())),
            ]
        };
        let a = tree_hash(&tree(0o755)).unwrap();
        assert_eq!(a, tree_hash(&tree(0o755)).unwrap());
        assert_ne!(a, tree_hash(&tree(0o644)).unwrap());
        std::fs::write(&file, "two").unwrap();
        assert_ne!(a, tree_hash(&tree(0o755)).unwrap());
        std::fs::remove_file(&file).unwrap();
        assert!(tree_hash(&tree(0o755)).is_err());
    }

    #[test]
    fn test_materialize_writes_every_kind() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let tree: Tree = vec![
            ("etc".into(), Member::Dir),
            ("etc/marker".into(), Member::Bytes(b"x\n".to_vec(), 0o644)),
            ("bin/sh".into(), Member::Symlink("busybox".into())),
        ];
        materialize(&tree, &root).unwrap();
        assert_eq!(std::fs::read(root.join("etc/marker")).unwrap(), b"x\n");
        assert_eq!(
            std::fs::read_link(root.join("bin/sh")).unwrap(),
            Path::new("busybox")
        );
    }

    #[test]
    fn test_l1_command_pins_disk_order() {
        let disks = [
            Disk {
                path: "/a.erofs".into(),
                read_only: true,
                serial: None,
            },
            Disk {
                path: "/b.img".into(),
                read_only: false,
                serial: Some("rm-data".into()),
            },
        ];
        let cmd = command(Path::new("/Image"), &disks, 1024, "x=1");
        let args: Vec<String> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert!(args.contains(&"virt,virtualization=on,gic-version=3".to_string()));
        assert!(args.contains(&"virtio-blk-device,drive=d0,bus=virtio-mmio-bus.0".to_string()));
        assert!(args.contains(
            &"virtio-blk-device,drive=d1,bus=virtio-mmio-bus.1,serial=rm-data".to_string()
        ));
        assert!(args
            .iter()
            .any(|a| a.contains("file=/a.erofs") && a.ends_with("readonly=on")));
        assert!(args
            .iter()
            .any(|a| a.contains("file=/b.img") && !a.contains("readonly")));
        assert!(args.last().unwrap().ends_with("quiet x=1"));
    }

    #[test]
    fn test_scripts_speak_the_l1_protocol() {
        assert!(L1_INIT.contains("NESTED L1 init"));
        assert!(L1_INIT.contains("NESTED L1 starting rmachine-vmm"));
        assert!(L1_INIT.contains("NESTED PASS") && L1_INIT.contains("NESTED FAIL"));
        assert!(L1_INIT.contains("/etc/nested/vm.json") && L1_INIT.contains("/etc/nested/env"));
        assert!(L2_INIT.contains("NESTED L2 root=") && L2_INIT.contains("poweroff -f"));
        assert!(L1_AGENT_INIT.contains("--uds /run/vsock.sock"));
        assert!(L1_AGENT_INIT.contains("/run/rm-root") && L1_AGENT_INIT.contains("/run/rm-config"));
        for applet in ["devmem", "tee", "killall", "poweroff", "tr", "ln"] {
            assert!(APPLETS.contains(&applet), "{applet}");
        }
    }
}
