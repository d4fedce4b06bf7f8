//! The guest root filesystem: `debootstrap --variant=minbase --arch=<arch>` of Debian
//! trixie with the packages of `rootfs/packages.txt` (the same for every architecture;
//! another architecture's package scripts run under QEMU's user-mode emulation), stripped of docs, man pages and locales, plus the
//! files of `rootfs/overlay/` and the agent, packed read-only as erofs (lz4hc).
//!
//! The writable state lives elsewhere: `/run` and `/tmp` are tmpfs, `/var/lib/docker`,
//! `/var/lib/containerd` and `/var/log` are bind mounts from the data disk that the agent
//! sets up, and `/etc/resolv.conf` points into `/run`.

use std::path::{Path, PathBuf};
use std::process::Command;

use rmachine_protocol::image::Arch;

use crate::BuildDirs;

use crate::apt::{Apt, SUITE};
use crate::{command, content_key, sha256_file, tools, ImageError, Progress};

const PACKAGES: &str = include_str!("../rootfs/packages.txt");

/// The overlay files, as (path in the guest, content).
const OVERLAY: &[(&str, &str)] = &[
    (
        "etc/docker/daemon.json",
        include_str!("../rootfs/overlay/etc/docker/daemon.json"),
    ),
    ("etc/hosts", include_str!("../rootfs/overlay/etc/hosts")),
];

/// Bumped when the base steps (debootstrap, stripping) change.
/// 2: the architecture in the key and on debootstrap's command line.
const BASE_RECIPE: &str = "2";
/// Bumped when the final assembly steps change.
const FINAL_RECIPE: &str = "2";

/// Directories removed from the base to keep the image small.
const STRIP: &[&str] = &[
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
    "usr/share/lintian",
    "usr/share/linda",
    "usr/share/bug",
    "usr/share/bash-completion",
    "usr/share/zsh",
    "usr/share/fish",
    "var/cache/apt",
    "var/lib/apt/lists",
    "var/cache/debconf",
    "var/log",
];

/// Empty directories the agent mounts on (the image is read-only).
const MOUNT_POINTS: &[&str] = &[
    "mnt/data",
    "Users",
    "var/lib/docker",
    "var/lib/containerd",
    "var/log",
    "run",
    "tmp",
    "dev",
    "proc",
    "sys",
    "sys/fs/cgroup",
];

/// Where the agent lives in the guest (the kernel's `init=`).
pub(crate) const AGENT_PATH: &str = "sbin/rmachine-agent";

#[derive(Debug)]
pub(crate) struct Agent {
    pub path: PathBuf,
    pub sha256: String,
}

pub(crate) struct Built {
    pub key: String,
    pub erofs: PathBuf,
}

/// Checks that the agent exists, is statically linked (the guest's libc is not ours) and
/// is built for `arch` (an agent of another architecture makes a guest that panics at
/// init).
pub(crate) fn check_agent(path: &Path, arch: Arch) -> Result<Agent, ImageError> {
    let bytes = std::fs::read(path).map_err(|_| ImageError::NoAgent(path.to_path_buf(), arch))?;
    if !is_static_elf(&bytes) {
        return Err(ImageError::AgentNotStatic(path.to_path_buf(), arch));
    }
    let machine = elf_machine(&bytes);
    if machine != Some(arch.elf_machine()) {
        let found = Arch::ALL
            .into_iter()
            .find(|a| Some(a.elf_machine()) == machine)
            .map(|a| a.kernel_name().to_string())
            .unwrap_or_else(|| format!("ELF machine {}", machine.unwrap_or(0)));
        return Err(ImageError::AgentWrongArch {
            path: path.to_path_buf(),
            found,
            arch,
        });
    }
    Ok(Agent {
        path: path.to_path_buf(),
        sha256: sha256_file(path)?,
    })
}

/// A 64-bit little-endian ELF executable without a PT_INTERP program header.
fn is_static_elf(b: &[u8]) -> bool {
    const PT_INTERP: u32 = 3;
    if b.len() < 64 || &b[..4] != b"\x7fELF" || b[4] != 2 || b[5] != 1 {
        return false;
    }
    let u16_at = |o: usize| {
        b.get(o..o + 2)
            .map(|s| u16::from_le_bytes([s[0], s[1]]) as usize)
    };
    let u64_at = |o: usize| {
        b.get(o..o + 8)
            .map(|s| u64::from_le_bytes(s.try_into().expect("slice of 8 bytes")) as usize)
    };
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(32), u16_at(54), u16_at(56)) else {
        return false;
    };
    (0..phnum).all(|i| {
        let off = phoff.saturating_add(i.saturating_mul(phentsize));
        match b.get(off..off + 4) {
            Some(t) => u32::from_le_bytes(t.try_into().expect("slice of 4 bytes")) != PT_INTERP,
            None => false,
        }
    })
}

/// The ELF header's `e_machine` (offset 18).
fn elf_machine(b: &[u8]) -> Option<u16> {
    b.get(18..20).map(|s| u16::from_le_bytes([s[0], s[1]]))
}

fn packages() -> Vec<&'static str> {
    PACKAGES
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect()
}

fn base_key(arch: Arch) -> String {
    content_key(&[
        ("recipe", BASE_RECIPE.as_bytes()),
        ("arch", arch.as_str().as_bytes()),
        ("suite", SUITE.as_bytes()),
        ("packages", PACKAGES.as_bytes()),
    ])
}

fn final_key(base: &str, agent: &Agent) -> String {
    let mut parts: Vec<(&str, &[u8])> = vec![
        ("recipe", FINAL_RECIPE.as_bytes()),
        ("base", base.as_bytes()),
        ("agent", agent.sha256.as_bytes()),
    ];
    for (path, content) in OVERLAY {
        parts.push((path, content.as_bytes()));
    }
    content_key(&parts)
}

/// Makes sure the debootstrapped base of `arch` is in the cache, unless the finished root
/// filesystem for `agent` is (it needs no base). Reports nothing while it works (its log
/// is `rootfs/build.log`), so that it can run beside the kernel build: the base spends most
/// of its time waiting (downloads, and under emulation the packages' scripts), the kernel
/// build on the CPUs. Returns how long debootstrap took, when it ran.
pub(crate) fn prepare_base(
    dirs: &BuildDirs,
    apt: &Apt,
    arch: Arch,
    agent: &Agent,
) -> Result<Option<std::time::Duration>, ImageError> {
    struct Silent;
    impl Progress for Silent {
        fn step(&self, _: usize, _: usize, _: &str) {}
        fn detail(&self, _: &str) {}
        fn finish(&self, _: &str) {}
    }
    let cache = dirs.rootfs_cache();
    std::fs::create_dir_all(&cache).map_err(ImageError::io("cannot create", &cache))?;
    let base_key = base_key(arch);
    let key = final_key(&base_key, agent);
    let base = cache.join(format!("base-{base_key}"));
    if cache.join(format!("{key}.erofs")).exists() || base.join(".complete").exists() {
        return Ok(None);
    }
    let started = std::time::Instant::now();
    debootstrap(&cache, &base, arch, apt, &Silent)?;
    Ok(Some(started.elapsed()))
}

pub(crate) fn build(
    dirs: &BuildDirs,
    apt: &Apt,
    arch: Arch,
    agent: &Agent,
    progress: &dyn Progress,
) -> Result<Built, ImageError> {
    let cache = dirs.rootfs_cache();
    std::fs::create_dir_all(&cache).map_err(ImageError::io("cannot create", &cache))?;
    let base_key = base_key(arch);
    let key = final_key(&base_key, agent);
    let erofs = cache.join(format!("{key}.erofs"));
    if erofs.exists() {
        progress.finish(&format!("{arch} root filesystem {} (cached)", &key[..12]));
        return Ok(Built { key, erofs });
    }
    let base = cache.join(format!("base-{base_key}"));
    if !base.join(".complete").exists() {
        debootstrap(&cache, &base, arch, apt, progress)?;
    } else {
        progress.detail(&format!("base {} (cached)", &base_key[..12]));
    }

    progress.detail("assembling the root filesystem");
    let stage = cache.join(format!("stage-{key}"));
    remove_dir(&stage)?;
    let log = cache.join("build.log");
    command::run(
        Command::new("cp").arg("-a").arg(&base).arg(&stage),
        &log,
        &mut |_| {},
    )?;
    let _ = std::fs::remove_file(stage.join(".complete"));
    assemble(&stage, agent)?;
    progress.detail("packing erofs (lz4hc)");
    let partial = cache.join(format!("{key}.erofs.partial"));
    command::run(
        Command::new("mkfs.erofs")
            .arg("-zlz4hc")
            .arg("-T0")
            .arg("--quiet")
            .arg(&partial)
            .arg(&stage),
        &log,
        &mut |_| {},
    )?;
    std::fs::rename(&partial, &erofs).map_err(ImageError::io("cannot move to", &erofs))?;
    remove_dir(&stage)?;
    progress.finish(&format!("{arch} root filesystem {} built", &key[..12]));
    Ok(Built { key, erofs })
}

fn debootstrap(
    cache: &Path,
    base: &Path,
    arch: Arch,
    apt: &Apt,
    progress: &dyn Progress,
) -> Result<(), ImageError> {
    let tmp = base.with_extension("partial");
    remove_dir(&tmp)?;
    remove_dir(base)?;
    let debs = cache.join("debs");
    std::fs::create_dir_all(&debs).map_err(ImageError::io("cannot create", &debs))?;
    progress.detail(&format!(
        "debootstrap {SUITE} {arch} from {} (log: {})",
        apt.mirror(),
        cache.join("build.log").display()
    ));
    let mut cmd = Command::new("debootstrap");
    cmd.arg(format!("--arch={arch}"))
        .arg("--variant=minbase")
        .arg(format!("--include={}", packages().join(",")))
        .arg(format!("--keyring={}", tools::TRIXIE_KEYRING))
        .arg(format!("--cache-dir={}", debs.display()))
        .arg(SUITE)
        .arg(&tmp)
        .arg(apt.mirror());
    command::run(&mut cmd, &cache.join("build.log"), &mut |line| {
        if let Some(rest) = line.strip_prefix("I: ") {
            if rest.starts_with("Retrieving")
                || rest.starts_with("Configuring")
                || rest.starts_with("Unpacking")
                || rest.starts_with("Installing")
            {
                progress.detail(rest);
            }
        }
    })?;
    for dir in STRIP {
        remove_dir(&tmp.join(dir))?;
    }
    std::fs::write(tmp.join(".complete"), "").map_err(ImageError::io("cannot write", &tmp))?;
    std::fs::rename(&tmp, base).map_err(ImageError::io("cannot move to", base))?;
    Ok(())
}

/// Applies the overlay, the agent, the mount points and the symlinks to a staged tree.
fn assemble(stage: &Path, agent: &Agent) -> Result<(), ImageError> {
    for (path, content) in OVERLAY {
        let dst = stage.join(path);
        if let Some(parent) = dst.parent() {
            std::fs::create_dir_all(parent).map_err(ImageError::io("cannot create", parent))?;
        }
        std::fs::write(&dst, content).map_err(ImageError::io("cannot write", &dst))?;
    }
    let agent_dst = stage.join(AGENT_PATH);
    std::fs::copy(&agent.path, &agent_dst)
        .map_err(ImageError::io("cannot install the agent at", &agent_dst))?;
    set_mode(&agent_dst, 0o755)?;
    for dir in MOUNT_POINTS {
        let d = stage.join(dir);
        remove_dir(&d)?;
        std::fs::create_dir_all(&d).map_err(ImageError::io("cannot create", &d))?;
    }
    set_mode(&stage.join("tmp"), 0o1777)?;
    // Files the guest writes at run time live in /run (tmpfs). debootstrap copied the
    // build host's resolv.conf and hostname: they must not leak into the image.
    for (link, target) in [
        ("etc/resolv.conf", "/run/resolv.conf"),
        ("etc/hostname", "/run/hostname"),
    ] {
        let l = stage.join(link);
        let _ = std::fs::remove_file(&l);
        std::os::unix::fs::symlink(target, &l).map_err(ImageError::io("cannot link", &l))?;
    }
    let machine_id = stage.join("etc/machine-id");
    std::fs::write(&machine_id, "").map_err(ImageError::io("cannot write", &machine_id))?;
    Ok(())
}

fn set_mode(path: &Path, mode: u32) -> Result<(), ImageError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(ImageError::io("cannot chmod", path))
}

fn remove_dir(path: &Path) -> Result<(), ImageError> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ImageError::Io {
            what: "cannot remove",
            path: path.to_path_buf(),
            source: e,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_package_list_has_the_engine() {
        let p = packages();
        for needed in [
            "docker.io",
            "containerd",
            "runc",
            "docker-compose",
            "docker-buildx",
            "iptables",
            "e2fsprogs",
        ] {
            assert!(p.contains(&needed), "{needed} missing from packages.txt");
        }
        assert!(!p.iter().any(|l| l.contains(' ')));
    }

    #[test]
    fn test_static_elf_detection() {
        // This test binary is dynamically linked on the gnu target.
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        if cfg!(target_env = "gnu") {
            assert!(!is_static_elf(&me));
        }
        assert!(!is_static_elf(b"#!/bin/sh\necho hi\n"));
        assert!(!is_static_elf(&[0x7f, b'E', b'L', b'F', 2, 1, 0, 0]));
        // A minimal static ELF header: no program headers at all.
        let mut elf = vec![0u8; 64];
        elf[..6].copy_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1]);
        assert!(is_static_elf(&elf));
        // The same with one PT_INTERP program header.
        elf[32..40].copy_from_slice(&64u64.to_le_bytes());
        elf[54..56].copy_from_slice(&56u16.to_le_bytes());
        elf[56..58].copy_from_slice(&1u16.to_le_bytes());
        elf.extend(vec![0u8; 56]);
        elf[64..68].copy_from_slice(&3u32.to_le_bytes());
        assert!(!is_static_elf(&elf));
    }

    /// A static ELF header of `machine` (no program headers).
    fn static_elf(machine: u16) -> Vec<u8> {
        let mut elf = vec![0u8; 64];
        elf[..6].copy_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1]);
        elf[18..20].copy_from_slice(&machine.to_le_bytes());
        elf
    }

    #[test]
    fn test_agent_of_another_arch_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let agent = dir.path().join("rmachine-agent");
        std::fs::write(&agent, static_elf(62)).unwrap();
        check_agent(&agent, Arch::Amd64).unwrap();
        let err = check_agent(&agent, Arch::Arm64).unwrap_err().to_string();
        assert!(
            err.contains("built for x86_64") && err.contains("aarch64-unknown-linux-musl"),
            "{err}"
        );
        std::fs::write(&agent, static_elf(183)).unwrap();
        check_agent(&agent, Arch::Arm64).unwrap();
        assert!(check_agent(&agent, Arch::Amd64).is_err());
        std::fs::write(&agent, static_elf(243)).unwrap();
        let err = check_agent(&agent, Arch::Arm64).unwrap_err().to_string();
        assert!(err.contains("ELF machine 243"), "{err}");
        let err = check_agent(&dir.path().join("none"), Arch::Arm64)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("not found") && err.contains("--target aarch64-unknown-linux-musl"),
            "{err}"
        );
    }

    #[test]
    fn test_base_key_depends_on_arch() {
        assert_ne!(base_key(Arch::Amd64), base_key(Arch::Arm64));
        assert_eq!(base_key(Arch::Arm64), base_key(Arch::Arm64));
    }

    #[test]
    fn test_assemble_writes_overlay_agent_and_links() {
        let dir = tempfile::tempdir().unwrap();
        let stage = dir.path().join("stage");
        std::fs::create_dir_all(stage.join("etc")).unwrap();
        std::fs::create_dir_all(stage.join("sbin")).unwrap();
        std::fs::create_dir_all(stage.join("var/log/apt")).unwrap();
        std::fs::write(stage.join("etc/resolv.conf"), "nameserver 192.0.2.1\n").unwrap();
        let agent_file = dir.path().join("agent");
        std::fs::write(&agent_file, b"agent").unwrap();
        let agent = Agent {
            path: agent_file,
            sha256: "x".into(),
        };
        assemble(&stage, &agent).unwrap();
        assert_eq!(std::fs::read(stage.join(AGENT_PATH)).unwrap(), b"agent");
        assert_eq!(
            std::fs::read_link(stage.join("etc/resolv.conf")).unwrap(),
            PathBuf::from("/run/resolv.conf")
        );
        assert!(stage.join("etc/docker/daemon.json").exists());
        assert!(stage.join("mnt/data").is_dir());
        assert!(
            !stage.join("var/log/apt").exists(),
            "var/log must be an empty mount point"
        );
    }
}
