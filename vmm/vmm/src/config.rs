//! The VMM's boot document: one JSON object given at start (`--config FILE`).
//!
//! Inputs use `deny_unknown_fields`; an `Option` means "built-in default", resolved in one
//! place ([`VmConfig::validate`]). Each field's doc states its default and unit. Validation
//! refuses impossible configurations with a message naming the field.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::boot::cpuid;
use crate::layout::{self, VIRTIO_SLOTS};

mod balloon;
mod net;

pub use balloon::BalloonConfig;
pub use net::{parse_mac, NetBackendKind, NetConfig, DEFAULT_MAC};

/// Default kernel command line: serial console, reset through the i8042 on reboot, no PCI, and
/// an i8042 driver that does not probe for a mouse or a PnP description.
#[cfg(not(target_arch = "aarch64"))]
pub const DEFAULT_CMDLINE: &str =
    "console=ttyS0 reboot=k panic=1 pci=off i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd";
/// Default kernel command line on aarch64: the PL011 console (PSCI resets and powers off).
#[cfg(target_arch = "aarch64")]
pub const DEFAULT_CMDLINE: &str = "console=ttyAMA0 panic=1";
/// Default number of vCPUs.
pub const DEFAULT_VCPUS: u8 = 1;
/// Default guest memory, MiB.
pub const DEFAULT_MEMORY_MIB: u64 = 512;
/// Most vCPUs (one MP table processor entry and APIC id each, below the IOAPIC's id).
pub const MAX_VCPUS: u8 = 32;

/// The whole boot document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// Number of vCPUs, 1..=32. Default 1.
    pub vcpus: Option<u8>,
    /// Guest RAM in MiB. Default 512.
    pub memory_mib: Option<u64>,
    /// The kernel to boot.
    pub kernel: KernelConfig,
    /// CPU model adjustments. Default: the host's, as KVM supports it.
    pub cpu: Option<CpuConfig>,
    /// The serial console. Default: discarded.
    pub serial: Option<SerialConfig>,
    /// Disks, in order. Default: none.
    #[serde(default)]
    pub disks: Vec<DiskConfig>,
    /// The vsock device. Default: none.
    pub vsock: Option<VsockConfig>,
    /// The entropy device. Default: none.
    pub rng: Option<RngConfig>,
    /// The network device. Default: none.
    pub net: Option<NetConfig>,
    /// Further network devices, each on a stream socket (backend `passt`: passt, or the
    /// switch of a network between machines, which speaks the same framing). Default:
    /// none.
    #[serde(default)]
    pub extra_nets: Vec<NetConfig>,
    /// The memory balloon. Default: none.
    pub balloon: Option<BalloonConfig>,
    /// Shared folders (virtio-fs through vhost-user backends such as virtiofsd), in order.
    /// With any, guest memory is shared (memfd) so the backends can map it. Default: none.
    #[serde(default)]
    pub filesystems: Vec<FsConfig>,
    /// Unix socket of the control API. Default: no API.
    pub api_socket: Option<PathBuf>,
    /// Folder `PUT /vm/snapshot` writes a snapshot into when its request names none (an
    /// existing folder; a jailed VMM sees it read-write, and can write snapshots nowhere
    /// else). Default: none (each request names its folder).
    pub snapshot_dir: Option<PathBuf>,
    /// Run confined (see the `jail` module): as an unprivileged user, in new mount, PID,
    /// network and IPC namespaces, seeing only the kernel, disks, backend sockets, the vsock
    /// socket's folder and `/dev/kvm`. Every path of the document must then be absolute.
    /// Default: not jailed.
    pub jail: Option<JailConfig>,
}

/// Who the jailed VMM runs as.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JailConfig {
    /// User id, not 0. Started as root: any unprivileged user (ideally one of its own).
    /// Started as a user: that user's own id (a user namespace maps only that one).
    pub uid: u32,
    /// Group id, not 0, with the same rule.
    pub gid: u32,
}

/// The kernel and how to start it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelConfig {
    /// A bzImage or an ELF vmlinux (booted through its PVH note when it has one).
    pub path: PathBuf,
    /// Kernel command line, before the `virtio_mmio.device=` entries the VMM appends.
    /// Default: [`DEFAULT_CMDLINE`].
    pub cmdline: Option<String>,
    /// An initial ramdisk. Default: none.
    pub initrd: Option<PathBuf>,
}

/// CPU model adjustments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct CpuConfig {
    /// CPUID features hidden from the guest, by Linux `/proc/cpuinfo` name (e.g. `avx512f`).
    /// Default: none.
    #[serde(default)]
    pub disable_features: Vec<String>,
}

/// The serial console (COM1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SerialConfig {
    /// File receiving the console output (created or appended). Default: none.
    pub log_path: Option<PathBuf>,
    /// Also copy output to the VMM's stdout and feed its stdin to the guest. Default: false.
    #[serde(default)]
    pub stdio: bool,
}

/// One virtio-blk disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskConfig {
    /// Name, unique among devices; the guest reads it as the disk serial (20 bytes).
    pub id: String,
    /// Raw image file.
    pub path: PathBuf,
    /// Refuse guest writes. Default: false.
    #[serde(default)]
    pub read_only: bool,
    /// virtio-mmio slot 0..=18 (address 0xd0000000 + 0x1000 × slot, IRQ 5 + slot).
    /// Default: the next free slot.
    pub slot: Option<u8>,
}

/// The virtio-vsock device with its hybrid unix-socket host side.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockConfig {
    /// The guest's context id, 3 or more.
    pub guest_cid: u32,
    /// Unix socket the VMM listens on for host-initiated connections (`CONNECT <port>\n`);
    /// guest connections to CID 2 port P go to `<uds_path>_P`.
    pub uds_path: PathBuf,
    /// virtio-mmio slot. Default: the next free slot.
    pub slot: Option<u8>,
}

/// One virtio-fs device whose queues a vhost-user backend (virtiofsd) processes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FsConfig {
    /// Mount tag the guest uses (`mount -t virtiofs TAG DIR`), 1 to 36 bytes, unique.
    pub tag: String,
    /// The backend's listening unix socket (`virtiofsd --socket-path`), which must exist.
    pub socket_path: PathBuf,
    /// virtio-mmio slot. Default: the next free slot.
    pub slot: Option<u8>,
}

/// The virtio-rng device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RngConfig {
    /// virtio-mmio slot. Default: the next free slot.
    pub slot: Option<u8>,
}

/// A refused configuration; the message names the field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The document is not valid JSON for [`VmConfig`].
    #[error("invalid configuration: {0}")]
    Parse(#[source] serde_json::Error),
    /// The document could not be read.
    #[error("cannot read configuration file {0}")]
    Read(PathBuf, #[source] std::io::Error),
    /// One field is impossible.
    #[error("{field}: {reason}")]
    Invalid {
        /// JSON path of the field (`disks[1].path`).
        field: String,
        /// What is wrong.
        reason: String,
    },
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

/// Which device sits in a virtio-mmio slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotDevice {
    /// `disks[i]`.
    Disk(usize),
    /// The vsock device.
    Vsock,
    /// The rng device.
    Rng,
    /// The net device.
    Net,
    /// `extra_nets[i]`.
    ExtraNet(usize),
    /// The balloon device.
    Balloon,
    /// `filesystems[i]`.
    Fs(usize),
}

/// A validated configuration with every default resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedConfig {
    /// The document as given.
    pub config: VmConfig,
    /// vCPUs.
    pub vcpus: u8,
    /// Guest RAM in bytes.
    pub memory_bytes: u64,
    /// Kernel command line before device entries.
    pub cmdline: String,
    /// CPUID features to hide.
    pub disabled_features: Vec<cpuid::Feature>,
    /// Slot assignment, ordered by slot.
    pub slots: BTreeMap<u8, SlotDevice>,
}

impl VmConfig {
    /// Parses a JSON document.
    pub fn from_json(text: &str) -> Result<Self, ConfigError> {
        serde_json::from_str(text).map_err(ConfigError::Parse)
    }

    /// Reads and parses a JSON file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|e| ConfigError::Read(path.to_path_buf(), e))?;
        Self::from_json(&text)
    }

    /// Resolves defaults and refuses impossible settings: missing or unreadable files, more
    /// memory than the host has, two devices in one slot, duplicate ids.
    pub fn validate(&self) -> Result<ResolvedConfig, ConfigError> {
        self.validate_with_host_memory(host_memory_bytes())
    }

    /// [`validate`](Self::validate) against a given amount of host memory (bytes, if known).
    pub fn validate_with_host_memory(
        &self,
        host_memory: Option<u64>,
    ) -> Result<ResolvedConfig, ConfigError> {
        let vcpus = self.vcpus.unwrap_or(DEFAULT_VCPUS);
        if vcpus == 0 || vcpus > MAX_VCPUS {
            return Err(invalid(
                "vcpus",
                format!("{vcpus} is not in 1..={MAX_VCPUS}"),
            ));
        }
        let memory_mib = self.memory_mib.unwrap_or(DEFAULT_MEMORY_MIB);
        if memory_mib < 16 {
            return Err(invalid(
                "memory_mib",
                format!("{memory_mib} MiB is below the minimum of 16 MiB"),
            ));
        }
        let memory_bytes = memory_mib
            .checked_mul(1 << 20)
            .ok_or_else(|| invalid("memory_mib", format!("{memory_mib} MiB is too large")))?;
        if let Some(host) = host_memory {
            if memory_bytes > host {
                return Err(invalid(
                    "memory_mib",
                    format!(
                        "{memory_mib} MiB is more than the host's {} MiB",
                        host >> 20
                    ),
                ));
            }
        }
        check_readable("kernel.path", &self.kernel.path)?;
        if let Some(initrd) = &self.kernel.initrd {
            check_readable("kernel.initrd", initrd)?;
        }
        let cmdline = self
            .kernel
            .cmdline
            .clone()
            .unwrap_or_else(|| DEFAULT_CMDLINE.to_string());
        if cmdline.len() >= layout::CMDLINE_MAX_SIZE / 2 {
            return Err(invalid(
                "kernel.cmdline",
                format!("{} bytes is too long", cmdline.len()),
            ));
        }
        let mut disabled_features = Vec::new();
        if let Some(cpu) = &self.cpu {
            for (i, name) in cpu.disable_features.iter().enumerate() {
                let feature = cpuid::Feature::by_name(name).ok_or_else(|| {
                    invalid(
                        format!("cpu.disable_features[{i}]"),
                        format!("unknown cpu feature {name:?}"),
                    )
                })?;
                disabled_features.push(feature);
            }
        }
        if let Some(serial) = &self.serial {
            if let Some(log) = &serial.log_path {
                check_parent_dir("serial.log_path", log)?;
            }
        }
        if let Some(api) = &self.api_socket {
            check_parent_dir("api_socket", api)?;
        }
        if let Some(dir) = &self.snapshot_dir {
            if !dir.is_dir() {
                return Err(invalid(
                    "snapshot_dir",
                    format!("{} is not an existing folder", dir.display()),
                ));
            }
        }
        if let Some(jail) = &self.jail {
            self.check_jail(jail)?;
        }

        let mut ids: BTreeMap<&str, String> = BTreeMap::new();
        let mut wanted: Vec<(String, Option<u8>, SlotDevice)> = Vec::new();
        for (i, disk) in self.disks.iter().enumerate() {
            let field = format!("disks[{i}]");
            if disk.id.is_empty() || disk.id.len() > 64 {
                return Err(invalid(format!("{field}.id"), "must be 1 to 64 bytes"));
            }
            if let Some(other) = ids.insert(&disk.id, field.clone()) {
                return Err(invalid(
                    format!("{field}.id"),
                    format!("{:?} is already used by {other}", disk.id),
                ));
            }
            check_disk(&format!("{field}.path"), &disk.path, disk.read_only)?;
            wanted.push((field, disk.slot, SlotDevice::Disk(i)));
        }
        if let Some(vsock) = &self.vsock {
            if vsock.guest_cid < 3 {
                return Err(invalid(
                    "vsock.guest_cid",
                    format!("{} is reserved (must be 3 or more)", vsock.guest_cid),
                ));
            }
            check_parent_dir("vsock.uds_path", &vsock.uds_path)?;
            wanted.push(("vsock".to_string(), vsock.slot, SlotDevice::Vsock));
        }
        if let Some(rng) = &self.rng {
            wanted.push(("rng".to_string(), rng.slot, SlotDevice::Rng));
        }
        if let Some(net) = &self.net {
            net.validate()?;
            wanted.push(("net".to_string(), net.slot, SlotDevice::Net));
        }
        for (i, net) in self.extra_nets.iter().enumerate() {
            if net.backend != NetBackendKind::Passt {
                return Err(invalid(
                    format!("extra_nets[{i}].backend"),
                    "must be \"passt\" (a stream socket)",
                ));
            }
            net.validate()?;
            wanted.push((
                format!("extra_nets[{i}]"),
                net.slot,
                SlotDevice::ExtraNet(i),
            ));
        }
        if let Some(balloon) = &self.balloon {
            wanted.push(("balloon".to_string(), balloon.slot, SlotDevice::Balloon));
        }
        let mut tags: BTreeMap<&str, String> = BTreeMap::new();
        for (i, fs) in self.filesystems.iter().enumerate() {
            let field = format!("filesystems[{i}]");
            if fs.tag.is_empty() || fs.tag.len() > 36 {
                return Err(invalid(format!("{field}.tag"), "must be 1 to 36 bytes"));
            }
            if let Some(other) = tags.insert(&fs.tag, field.clone()) {
                return Err(invalid(
                    format!("{field}.tag"),
                    format!("{:?} is already used by {other}", fs.tag),
                ));
            }
            check_socket(
                &format!("{field}.socket_path"),
                &fs.socket_path,
                "the vhost-user backend",
            )?;
            wanted.push((field, fs.slot, SlotDevice::Fs(i)));
        }

        // Explicit slots first, then the rest in order.
        let mut slots: BTreeMap<u8, SlotDevice> = BTreeMap::new();
        let mut owners: BTreeMap<u8, String> = BTreeMap::new();
        for (field, slot, device) in &wanted {
            if let Some(slot) = slot {
                if *slot >= VIRTIO_SLOTS {
                    return Err(invalid(
                        format!("{field}.slot"),
                        format!("{slot} is not in 0..{VIRTIO_SLOTS}"),
                    ));
                }
                if let Some(other) = owners.get(slot) {
                    return Err(invalid(
                        format!("{field}.slot"),
                        format!("slot {slot} is already used by {other}"),
                    ));
                }
                owners.insert(*slot, field.clone());
                slots.insert(*slot, device.clone());
            }
        }
        for (field, slot, device) in &wanted {
            if slot.is_none() {
                let free = (0..VIRTIO_SLOTS)
                    .find(|s| !slots.contains_key(s))
                    .ok_or_else(|| {
                        invalid(
                            field.clone(),
                            format!("no free slot (at most {VIRTIO_SLOTS} devices)"),
                        )
                    })?;
                slots.insert(free, device.clone());
            }
        }
        Ok(ResolvedConfig {
            config: self.clone(),
            vcpus,
            memory_bytes,
            cmdline,
            disabled_features,
            slots,
        })
    }
}

impl VmConfig {
    /// Every path (field, path) the document names.
    pub fn paths(&self) -> Vec<(String, &Path)> {
        let mut paths: Vec<(String, &Path)> = vec![("kernel.path".into(), &self.kernel.path)];
        if let Some(p) = &self.kernel.initrd {
            paths.push(("kernel.initrd".into(), p));
        }
        if let Some(p) = self.serial.as_ref().and_then(|s| s.log_path.as_ref()) {
            paths.push(("serial.log_path".into(), p));
        }
        for (i, d) in self.disks.iter().enumerate() {
            paths.push((format!("disks[{i}].path"), &d.path));
        }
        if let Some(v) = &self.vsock {
            paths.push(("vsock.uds_path".into(), &v.uds_path));
        }
        if let Some(p) = self.net.as_ref().and_then(|n| n.socket.as_ref()) {
            paths.push(("net.socket".into(), p));
        }
        for (i, n) in self.extra_nets.iter().enumerate() {
            if let Some(p) = &n.socket {
                paths.push((format!("extra_nets[{i}].socket"), p));
            }
        }
        for (i, f) in self.filesystems.iter().enumerate() {
            paths.push((format!("filesystems[{i}].socket_path"), &f.socket_path));
        }
        if let Some(p) = &self.api_socket {
            paths.push(("api_socket".into(), p));
        }
        if let Some(p) = &self.snapshot_dir {
            paths.push(("snapshot_dir".into(), p));
        }
        paths
    }

    fn check_jail(&self, jail: &JailConfig) -> Result<(), ConfigError> {
        if jail.uid == 0 {
            return Err(invalid(
                "jail.uid",
                "0 is root; the jail needs an unprivileged user",
            ));
        }
        if jail.gid == 0 {
            return Err(invalid(
                "jail.gid",
                "0 is root's group; the jail needs another",
            ));
        }
        for (field, path) in self.paths() {
            if !path.is_absolute() {
                return Err(invalid(
                    field,
                    format!("{} must be absolute in a jail", path.display()),
                ));
            }
        }
        if let Some(v) = &self.vsock {
            if v.uds_path.parent().is_none_or(|p| p == Path::new("/")) {
                return Err(invalid(
                    "vsock.uds_path",
                    "its folder is shown in the jail: it cannot be /",
                ));
            }
        }
        Ok(())
    }
}

fn check_readable(field: &str, path: &Path) -> Result<(), ConfigError> {
    match std::fs::File::open(path) {
        Ok(f) => match f.metadata() {
            Ok(m) if m.is_file() => Ok(()),
            Ok(_) => Err(invalid(
                field,
                format!("{} is not a regular file", path.display()),
            )),
            Err(e) => Err(invalid(
                field,
                format!("cannot read {}: {e}", path.display()),
            )),
        },
        Err(e) => Err(invalid(
            field,
            format!("cannot read {}: {e}", path.display()),
        )),
    }
}

fn check_disk(field: &str, path: &Path, read_only: bool) -> Result<(), ConfigError> {
    let result = std::fs::OpenOptions::new()
        .read(true)
        .write(!read_only)
        .open(path);
    match result {
        Ok(f) => match f.metadata() {
            Ok(m) if m.is_file() || m.file_type().is_block_device_like() => Ok(()),
            Ok(_) => Err(invalid(field, format!("{} is not a file", path.display()))),
            Err(e) => Err(invalid(
                field,
                format!("cannot open {}: {e}", path.display()),
            )),
        },
        Err(e) => {
            let mode = if read_only {
                "reading"
            } else {
                "reading and writing"
            };
            Err(invalid(
                field,
                format!("cannot open {} for {mode}: {e}", path.display()),
            ))
        }
    }
}

/// Block devices are accepted as disks too.
trait BlockDeviceLike {
    fn is_block_device_like(&self) -> bool;
}

impl BlockDeviceLike for std::fs::FileType {
    fn is_block_device_like(&self) -> bool {
        use std::os::unix::fs::FileTypeExt;
        self.is_block_device()
    }
}

/// `path` exists and is a unix socket, where `what` (a backend process) listens; whether it
/// accepts shows at start.
fn check_socket(field: &str, path: &Path, what: &str) -> Result<(), ConfigError> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::metadata(path) {
        Ok(m) if m.file_type().is_socket() => Ok(()),
        Ok(_) => Err(invalid(
            field,
            format!("{} is not a unix socket", path.display()),
        )),
        Err(e) => Err(invalid(
            field,
            format!("cannot reach {what} at {}: {e}", path.display()),
        )),
    }
}

fn check_parent_dir(field: &str, path: &Path) -> Result<(), ConfigError> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if parent.is_dir() {
        Ok(())
    } else {
        Err(invalid(
            field,
            format!("directory {} does not exist", parent.display()),
        ))
    }
}

/// The host's total memory (bytes), from /proc/meminfo.
pub fn host_memory_bytes() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Files {
        dir: tempfile::TempDir,
    }

    impl Files {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("vmlinux"), b"kernel").unwrap();
            std::fs::write(dir.path().join("a.img"), vec![0u8; 4096]).unwrap();
            std::fs::write(dir.path().join("b.img"), vec![0u8; 4096]).unwrap();
            Files { dir }
        }
        fn p(&self, name: &str) -> String {
            self.dir.path().join(name).display().to_string()
        }
    }

    fn parse(json: serde_json::Value) -> Result<ResolvedConfig, ConfigError> {
        VmConfig::from_json(&json.to_string())?.validate_with_host_memory(Some(8 << 30))
    }

    #[test]
    fn test_minimal_config_gets_defaults() {
        let f = Files::new();
        let r = parse(serde_json::json!({"kernel": {"path": f.p("vmlinux")}})).unwrap();
        assert_eq!(r.vcpus, 1);
        assert_eq!(r.memory_bytes, 512 << 20);
        assert_eq!(r.cmdline, DEFAULT_CMDLINE);
        assert!(r.slots.is_empty());
    }

    #[test]
    fn test_full_config_assigns_slots() {
        let f = Files::new();
        let r = parse(serde_json::json!({
            "vcpus": 2,
            "memory_mib": 256,
            "kernel": {"path": f.p("vmlinux"), "cmdline": "console=ttyS0"},
            "cpu": {"disable_features": ["avx512f"]},
            "serial": {"log_path": f.p("console.log")},
            "disks": [
                {"id": "root", "path": f.p("a.img"), "read_only": true},
                {"id": "data", "path": f.p("b.img"), "slot": 0}
            ],
            "vsock": {"guest_cid": 3, "uds_path": f.p("vsock.sock")},
            "rng": {},
            "api_socket": f.p("vmm.sock")
        }))
        .unwrap();
        assert_eq!(r.slots.get(&0), Some(&SlotDevice::Disk(1)));
        assert_eq!(r.slots.get(&1), Some(&SlotDevice::Disk(0)));
        assert_eq!(r.slots.get(&2), Some(&SlotDevice::Vsock));
        assert_eq!(r.slots.get(&3), Some(&SlotDevice::Rng));
    }

    fn err(json: serde_json::Value) -> String {
        parse(json).unwrap_err().to_string()
    }

    #[test]
    fn test_refuses_missing_kernel() {
        let e = err(serde_json::json!({"kernel": {"path": "/nonexistent/vmlinux"}}));
        assert!(
            e.starts_with("kernel.path: cannot read /nonexistent/vmlinux"),
            "{e}"
        );
    }

    #[test]
    fn test_refuses_unknown_field() {
        let f = Files::new();
        let e = err(serde_json::json!({"kernel": {"path": f.p("vmlinux")}, "gpu": {}}));
        assert!(e.contains("unknown field `gpu`"), "{e}");
    }

    #[test]
    fn test_refuses_too_much_memory() {
        let f = Files::new();
        let e = err(serde_json::json!({"kernel": {"path": f.p("vmlinux")}, "memory_mib": 1 << 20}));
        assert!(
            e.starts_with("memory_mib: 1048576 MiB is more than the host's 8192 MiB"),
            "{e}"
        );
    }

    #[test]
    fn test_refuses_unreadable_disk() {
        let f = Files::new();
        let e = err(
            serde_json::json!({"kernel": {"path": f.p("vmlinux")}, "disks": [
            {"id": "a", "path": f.p("a.img")}, {"id": "b", "path": f.p("missing.img")}]}),
        );
        assert!(e.starts_with("disks[1].path: cannot open"), "{e}");
    }

    #[test]
    fn test_refuses_two_devices_on_one_slot() {
        let f = Files::new();
        let e = err(serde_json::json!({"kernel": {"path": f.p("vmlinux")},
            "disks": [{"id": "a", "path": f.p("a.img"), "slot": 4}],
            "rng": {"slot": 4}}));
        assert_eq!(e, "rng.slot: slot 4 is already used by disks[0]");
    }

    #[test]
    fn test_refuses_duplicate_ids_bad_cid_and_unknown_cpu_feature() {
        let f = Files::new();
        let e = err(serde_json::json!({"kernel": {"path": f.p("vmlinux")},
            "disks": [{"id": "a", "path": f.p("a.img")}, {"id": "a", "path": f.p("b.img")}]}));
        assert!(e.starts_with("disks[1].id:"), "{e}");
        let e = err(serde_json::json!({"kernel": {"path": f.p("vmlinux")},
            "vsock": {"guest_cid": 2, "uds_path": f.p("v.sock")}}));
        assert!(e.starts_with("vsock.guest_cid:"), "{e}");
        let e = err(serde_json::json!({"kernel": {"path": f.p("vmlinux")},
            "cpu": {"disable_features": ["avx", "warp_drive"]}}));
        assert!(
            e.starts_with("cpu.disable_features[1]: unknown cpu feature"),
            "{e}"
        );
        let e = err(serde_json::json!({"kernel": {"path": f.p("vmlinux")}, "vcpus": 0}));
        assert!(e.starts_with("vcpus:"), "{e}");
    }

    #[test]
    fn test_jail_refuses_root_and_relative_paths() {
        let f = Files::new();
        let r = parse(serde_json::json!({"kernel": {"path": f.p("vmlinux")},
            "jail": {"uid": 1000, "gid": 1000}}))
        .unwrap();
        assert_eq!(
            r.config.jail,
            Some(JailConfig {
                uid: 1000,
                gid: 1000
            })
        );
        let e = err(serde_json::json!({"kernel": {"path": f.p("vmlinux")},
            "jail": {"uid": 0, "gid": 1000}}));
        assert!(e.starts_with("jail.uid: 0 is root"), "{e}");
        let e = err(serde_json::json!({"kernel": {"path": f.p("vmlinux")},
            "jail": {"uid": 1, "gid": 0}}));
        assert!(e.starts_with("jail.gid:"), "{e}");
        let e = err(serde_json::json!({"kernel": {"path": f.p("vmlinux")},
            "jail": {"uid": 1, "gid": 1, "chroot": "/srv"}}));
        assert!(e.contains("unknown field `chroot`"), "{e}");
        // Checked before the disks are opened.
        let e = err(serde_json::json!({"kernel": {"path": f.p("vmlinux")},
            "disks": [{"id": "a", "path": "a.img"}], "jail": {"uid": 1, "gid": 1}}));
        assert_eq!(e, "disks[0].path: a.img must be absolute in a jail");
    }

    #[test]
    fn test_filesystems_need_a_socket_and_unique_tags() {
        let f = Files::new();
        let sock = f.p("fs.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let r = parse(serde_json::json!({"kernel": {"path": f.p("vmlinux")},
            "filesystems": [{"tag": "home", "socket_path": sock}]}))
        .unwrap();
        assert_eq!(r.slots.get(&0), Some(&SlotDevice::Fs(0)));
        let e = err(serde_json::json!({"kernel": {"path": f.p("vmlinux")},
            "filesystems": [{"tag": "home", "socket_path": f.p("missing.sock")}]}));
        assert!(
            e.starts_with("filesystems[0].socket_path: cannot reach the vhost-user backend at"),
            "{e}"
        );
        let e = err(serde_json::json!({"kernel": {"path": f.p("vmlinux")},
            "filesystems": [{"tag": "home", "socket_path": f.p("a.img")}]}));
        assert!(e.ends_with("is not a unix socket"), "{e}");
        let e = err(serde_json::json!({"kernel": {"path": f.p("vmlinux")},
            "filesystems": [{"tag": "a", "socket_path": sock}, {"tag": "a", "socket_path": sock}]}));
        assert_eq!(
            e,
            "filesystems[1].tag: \"a\" is already used by filesystems[0]"
        );
        let e = err(serde_json::json!({"kernel": {"path": f.p("vmlinux")},
            "filesystems": [{"tag": "x".repeat(37), "socket_path": sock}]}));
        assert_eq!(e, "filesystems[0].tag: must be 1 to 36 bytes");
    }

    #[test]
    fn test_extra_nets_are_stream_sockets_with_their_own_slots() {
        let f = Files::new();
        let sock = f.p("switch.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let r = parse(serde_json::json!({"kernel": {"path": f.p("vmlinux")},
            "extra_nets": [{"backend": "passt", "socket": sock, "mac": "02:72:6d:00:00:01"}]}))
        .unwrap();
        assert_eq!(r.slots.get(&0), Some(&SlotDevice::ExtraNet(0)));
        let e = err(serde_json::json!({"kernel": {"path": f.p("vmlinux")},
            "extra_nets": [{"backend": "tap", "tap": "tap0"}]}));
        assert!(e.starts_with("extra_nets[0].backend"), "{e}");
    }
}
