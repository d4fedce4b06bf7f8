//! An L1 initramfs: busybox, an init script and the common setup it sources, the KVM, virtio
//! and vhost-vsock modules, rmachine-vmm with its shared libraries, the static nested client,
//! the guest kernel, configuration files under `/etc/nested/`, and for some uses virtiofsd or
//! QEMU. It is cached by content hash under `<cache>/initramfs-<name>-<hash>.cpio`
//! (uncompressed: the L1 kernel would spend longer inflating it under TCG than QEMU spends
//! loading it).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use super::cpio::{self, Entry};
use super::kernel::L1Kernel;

/// QEMU's firmware for `-M microvm` with `-kernel` (qboot, under both names QEMU versions
/// look for, and the option ROM that loads the kernel through fw_cfg DMA). QEMU finds them in
/// `<binary>/../share/qemu`, so the binary goes to `/usr/bin`.
pub const QEMU_FIRMWARE: &[&str] = &["bios-microvm.bin", "qboot.rom", "linuxboot_dma.bin"];
/// Where QEMU's firmware is on the host (Debian's qemu-system-data).
const QEMU_FIRMWARE_DIR: &str = "/usr/share/qemu";

/// What goes into the initramfs besides busybox.
pub struct Inputs<'a> {
    /// Names the cache file, so that the test's and the benchmark's archives do not evict
    /// each other.
    pub name: &'a str,
    /// The init script (PID 1).
    pub init: &'a str,
    /// L1's kernel and modules.
    pub kernel: &'a L1Kernel,
    /// `rmachine-vmm` (dynamically linked: its libraries are copied too).
    pub vmm: &'a Path,
    /// `rmachine-nested-client` (static).
    pub client: &'a Path,
    /// virtiofsd, which serves L1's `/share` to the guest (the bundle `rmachine setup`
    /// installs, run through its own loader inside L1 too).
    pub virtiofsd: Option<&'a rmachine_machine::host_tools::HostTool>,
    /// `qemu-system-x86_64` (dynamically linked: its libraries and microvm firmware go along),
    /// installed as `/usr/bin/qemu-system-x86_64`.
    pub qemu: Option<&'a Path>,
    /// The guest kernel (bzImage).
    pub guest_kernel: &'a Path,
    /// Files under `/etc/nested/` (name, contents): the VMM's configuration, `env` (shell
    /// variables for the init script, `NAME=value` lines), argument lists.
    pub files: Vec<(String, String)>,
    /// More dynamically linked programs (path in the archive, program); their libraries
    /// go along with rmachine-vmm's.
    pub programs: Vec<(String, PathBuf)>,
    /// Any other entries, last.
    pub extra: Vec<Entry>,
}

/// Whether an ELF executable has a program interpreter (is dynamically linked).
pub fn elf_has_interp(elf: &[u8]) -> Result<bool, String> {
    const PT_INTERP: u32 = 3;
    if elf.len() < 64 || &elf[..4] != b"\x7fELF" || elf[4] != 2 {
        return Err("not a 64-bit ELF file".into());
    }
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(elf[0x20..0x28].try_into().expect("8 bytes")) as usize;
    let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
    for i in 0..phnum {
        let at = phoff + i * phentsize;
        let Some(ty) = elf.get(at..at + 4) else {
            return Err("program headers run past the end".into());
        };
        if u32::from_le_bytes(ty.try_into().expect("4 bytes")) == PT_INTERP {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The absolute library paths in `ldd` output (the loader included, the vDSO not).
pub fn parse_ldd(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            let path = match line.split_once("=>") {
                Some((_, rest)) => rest.split_whitespace().next()?,
                None => line.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| path.to_string())
        })
        .collect()
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn static_busybox() -> Vec<u8> {
    for candidate in ["/bin/busybox", "/usr/bin/busybox"] {
        if let Ok(bytes) = std::fs::read(candidate) {
            if elf_has_interp(&bytes) == Ok(false) {
                return bytes;
            }
        }
    }
    panic!(
        "no static busybox (/bin/busybox) for the L1 initramfs: install the Debian package \
         busybox-static"
    )
}

/// The absolute paths of the shared libraries of a dynamically linked `binary` (`ldd`).
fn libraries(binary: &Path) -> Vec<String> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .expect("run ldd (Debian package libc-bin) to list a binary's libraries");
    let libs = parse_ldd(&String::from_utf8_lossy(&out.stdout));
    assert!(
        !libs.is_empty(),
        "ldd found no libraries of {}: {}",
        binary.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    libs
}

/// QEMU at `/usr/bin` and its microvm firmware at `/usr/share/qemu`.
fn qemu_entries(qemu: &Path) -> Vec<Entry> {
    let mut e = vec![Entry::file("usr/bin/qemu-system-x86_64", 0o755, read(qemu))];
    for name in QEMU_FIRMWARE {
        let path = Path::new(QEMU_FIRMWARE_DIR).join(name);
        match std::fs::read(&path) {
            Ok(bytes) => e.push(Entry::file(&format!("usr/share/qemu/{name}"), 0o644, bytes)),
            Err(_) if *name != "linuxboot_dma.bin" => {}
            Err(err) => panic!(
                "cannot read {} ({err}): install the Debian package qemu-system-data",
                path.display()
            ),
        }
    }
    assert!(
        e.iter()
            .any(|f| f.path.ends_with("qboot.rom") || f.path.ends_with("bios-microvm.bin")),
        "no qboot.rom or bios-microvm.bin in {QEMU_FIRMWARE_DIR}: install the Debian package \
         qemu-system-data"
    );
    e
}

/// The entries of the archive, in order.
pub fn entries(inputs: &Inputs) -> Vec<Entry> {
    let mut e = vec![
        Entry::file("init", 0o755, inputs.init.as_bytes().to_vec()),
        Entry::file(
            "etc/nested/l1-setup.sh",
            0o644,
            super::L1_SETUP.as_bytes().to_vec(),
        ),
        Entry::file("bin/busybox", 0o755, static_busybox()),
        Entry::char_dev("dev/console", 0o600, 5, 1),
    ];
    for dir in ["proc", "sys", "tmp", "run"] {
        e.push(Entry::dir(dir));
    }
    let mut module_names = String::new();
    for module in &inputs.kernel.modules {
        let name = module
            .file_name()
            .and_then(|n| n.to_str())
            .expect("module file name");
        e.push(Entry::file(
            &format!("lib/modules/{name}"),
            0o644,
            read(module),
        ));
        module_names.push_str(name);
        module_names.push('\n');
    }
    e.push(Entry::file(
        "etc/nested/modules",
        0o644,
        module_names.into_bytes(),
    ));

    e.push(Entry::file("bin/rmachine-vmm", 0o755, read(inputs.vmm)));
    let mut libs: BTreeSet<String> = libraries(inputs.vmm).into_iter().collect();
    if let Some(qemu) = inputs.qemu {
        e.extend(qemu_entries(qemu));
        libs.extend(libraries(qemu));
    }
    for (path, program) in &inputs.programs {
        e.push(Entry::file(path, 0o755, read(program)));
        libs.extend(libraries(program));
    }
    for lib in libs {
        // The path as the loader looks it up, with the contents of what it points to.
        e.push(Entry::file(&lib, 0o755, read(Path::new(&lib))));
    }

    let client = read(inputs.client);
    assert_eq!(
        elf_has_interp(&client),
        Ok(false),
        "{} must be static (built for x86_64-unknown-linux-musl)",
        inputs.client.display()
    );
    e.push(Entry::file("bin/rmachine-nested-client", 0o755, client));
    if let Some(virtiofsd) = inputs.virtiofsd {
        e.extend(virtiofsd_entries(virtiofsd));
    }
    e.push(Entry::file("l2/bzImage", 0o644, read(inputs.guest_kernel)));
    for (name, text) in &inputs.files {
        e.push(Entry::file(
            &format!("etc/nested/{name}"),
            0o644,
            text.clone().into_bytes(),
        ));
    }
    e.extend(inputs.extra.iter().cloned());
    e
}

/// A host tool bundle of `rmachine setup` (`<cache>/host-tools/<name>`: trixie's loader, the
/// libraries the tool needs as the loader lists them, the tool, `.complete`) copied to
/// `dest` in the archive, with the same layout, so that `rmachine` finds it there.
pub fn bundle_entries(
    tool: &rmachine_machine::host_tools::HostTool,
    bundle: &Path,
    dest: &str,
) -> Vec<Entry> {
    let (Some(loader), Some(lib_dir)) = (&tool.loader, &tool.library_path) else {
        panic!(
            "{} is not a bundle of `rmachine setup`",
            tool.binary.display()
        );
    };
    let out = Command::new(loader)
        .arg("--library-path")
        .arg(lib_dir)
        .arg("--list")
        .arg(&tool.binary)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {} --list: {e}", loader.display()));
    assert!(
        out.status.success(),
        "{} --list {} failed",
        loader.display(),
        tool.binary.display()
    );
    let mut files: BTreeSet<PathBuf> = parse_ldd(&String::from_utf8_lossy(&out.stdout))
        .into_iter()
        .map(PathBuf::from)
        .collect();
    files.extend([
        loader.clone(),
        tool.binary.clone(),
        bundle.join(".complete"),
    ]);
    files
        .iter()
        .filter_map(|f| {
            // The loader lists itself by its standard path; the bundle's own is included above.
            let rel = f.strip_prefix(bundle).ok()?;
            Some(Entry::file(
                &format!("{dest}/{}", rel.display()),
                0o755,
                read(f),
            ))
        })
        .collect()
}

/// virtiofsd under `opt/virtiofsd/`: the binary, its loader as `ld.so` and its libraries in
/// `lib/`, as the loader lists them (the init script runs `ld.so --library-path lib
/// virtiofsd`, so the bundle's newer glibc never meets rmachine-vmm's).
fn virtiofsd_entries(tool: &rmachine_machine::host_tools::HostTool) -> Vec<Entry> {
    let loader = tool
        .loader
        .clone()
        .unwrap_or_else(|| PathBuf::from("/lib64/ld-linux-x86-64.so.2"));
    let mut list = Command::new(&loader);
    if let Some(libs) = &tool.library_path {
        list.arg("--library-path").arg(libs);
    }
    let out = list
        .arg("--list")
        .arg(&tool.binary)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {} --list: {e}", loader.display()));
    let libs = parse_ldd(&String::from_utf8_lossy(&out.stdout));
    assert!(
        out.status.success() && !libs.is_empty(),
        "{} --list {} found no libraries: {}",
        loader.display(),
        tool.binary.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let mut e = vec![
        Entry::file("opt/virtiofsd/virtiofsd", 0o755, read(&tool.binary)),
        Entry::file("opt/virtiofsd/ld.so", 0o755, read(&loader)),
    ];
    for lib in libs {
        let path = Path::new(&lib);
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .expect("library file name");
        if name.starts_with("ld-linux") {
            continue;
        }
        e.push(Entry::file(
            &format!("opt/virtiofsd/lib/{name}"),
            0o755,
            read(path),
        ));
    }
    e
}

/// sha256 over every entry's path, mode, device and contents.
pub fn content_key(entries: &[Entry]) -> String {
    let mut h = Sha256::new();
    for e in entries {
        h.update((e.path.len() as u64).to_le_bytes());
        h.update(e.path.as_bytes());
        h.update(e.mode.to_le_bytes());
        h.update(e.rdev.0.to_le_bytes());
        h.update(e.rdev.1.to_le_bytes());
        h.update((e.data.len() as u64).to_le_bytes());
        h.update(&e.data);
    }
    format!("{:x}", h.finalize())
}

/// The cached initramfs for `inputs`, written if missing. Older initramfs files of the same
/// name are removed.
pub fn build(cache: &Path, inputs: &Inputs) -> PathBuf {
    let entries = entries(inputs);
    let key = content_key(&entries);
    let prefix = format!("initramfs-{}-", inputs.name);
    let path = cache.join(format!("{prefix}{}.cpio", &key[..16]));
    if path.exists() {
        eprintln!("nested: initramfs cached: {}", path.display());
        return path;
    }
    std::fs::create_dir_all(cache).expect("create the nested cache");
    let tmp = cache.join(format!("tmp-initramfs-{}", std::process::id()));
    let mut out = std::io::BufWriter::new(std::fs::File::create(&tmp).expect("create initramfs"));
    cpio::write_archive(&mut out, &entries).expect("write initramfs");
    drop(out);
    for old in std::fs::read_dir(cache).into_iter().flatten().flatten() {
        let name = old.file_name().to_string_lossy().into_owned();
        // `initramfs-<hash>.cpio`: the unnamed archives of older harness versions.
        let unnamed = name.len() == "initramfs-".len() + 16 + ".cpio".len();
        if (name.starts_with(&prefix) || (unnamed && name.starts_with("initramfs-")))
            && name.ends_with(".cpio")
        {
            let _ = std::fs::remove_file(old.path());
        }
    }
    std::fs::rename(&tmp, &path).expect("move the initramfs into the cache");
    eprintln!("nested: initramfs built: {}", path.display());
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_parse_ldd() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\
            \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f55)\n\
            \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f55)\n\
            \t/lib64/ld-linux-x86-64.so.2 (0x00007f55)\n";
        assert_eq!(
            parse_ldd(text),
            [
                "/lib/x86_64-linux-gnu/libgcc_s.so.1",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2"
            ]
        );
        assert!(parse_ldd("\tstatically linked\n").is_empty());
    }

    #[test]
    fn test_elf_has_interp() {
        // The test binary itself is dynamically linked (gnu target); `sh` too.
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert_eq!(elf_has_interp(&me), Ok(true));
        assert!(elf_has_interp(b"#!/bin/sh\n").is_err());
        // A minimal ELF header with no program headers is static.
        let mut elf = vec![0u8; 64];
        elf[..5].copy_from_slice(b"\x7fELF\x02");
        assert_eq!(elf_has_interp(&elf), Ok(false));
    }

    #[test]
    fn test_content_key_changes_with_any_input() {
        let a = [Entry::file("x", 0o644, vec![1])];
        let b = [Entry::file("x", 0o755, vec![1])];
        let c = [Entry::file("x", 0o644, vec![2])];
        let d = [Entry::file("y", 0o644, vec![1])];
        let keys: std::collections::BTreeSet<String> = [&a, &b, &c, &d]
            .iter()
            .map(|e| content_key(&e[..]))
            .collect();
        assert_eq!(keys.len(), 4);
        assert_eq!(content_key(&a), content_key(&a.clone()));
    }
}
