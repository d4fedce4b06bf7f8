//! A machine's saved state: what `rmachine stop` keeps of a running VM so that the next
//! `rmachine start` resumes it instead of booting (containers keep running, nothing
//! restarts). Two files in the machine folder, both the owner's alone (the state holds
//! the guest's memory, the header the guest link's token):
//!
//! - `saved.vmstate`: the VM in its backend's own format (QEMU's migration stream).
//! - `saved.json`: this module's [`SavedHeader`], written atomically after the state file
//!   is complete and synced: a state file without it is an unfinished save.
//!
//! A start resumes only a state whose header checks ([`SavedHeader::check`]): same format
//! version, complete, the same image, settings and devices, the data disk untouched since
//! the save, and (checked by the backend once it runs) the same VMM version. Anything else
//! is refused with a reason that names it; the machine boots cold and the state is
//! discarded. Nothing the guest wrote is lost that way: before saving, the guest flushed
//! its writes to the data disk, so a discarded state costs the running processes only,
//! as a reboot would.

use std::io::ErrorKind;
use std::path::Path;
use std::time::UNIX_EPOCH;

use serde::{Deserialize, Serialize};

use crate::paths::MachinePaths;

/// Version of the header format (and of what it promises of the state file).
pub const SAVED_VERSION: u32 = 1;

/// The longest header read (it is small; anything bigger is not ours).
const MAX_HEADER_BYTES: u64 = 1 << 20;

/// What a saved state was saved from, written last.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedHeader {
    pub version: u32,
    /// What ran the VM (`qemu`).
    pub backend: String,
    /// The VMM's own version (QEMU's `query-version`, "7.2.22"): a state loads only into
    /// the same.
    pub vmm_version: String,
    /// The guest image version.
    pub image: String,
    /// The machine's resolved settings (`MachineSpec`) at the save.
    pub settings: serde_json::Value,
    /// The VM's devices: its command line without what changes every start (the host
    /// ports of the guest link). A state loads only into the same devices.
    pub devices: Vec<String>,
    /// The guest link's token the resumed guest agent still holds.
    pub token: String,
    /// Length of `saved.vmstate`.
    pub state_size_bytes: u64,
    /// The data disk as the save left it: any write since makes the state stale.
    pub data_disk: DiskStamp,
    pub saved_at_unix: u64,
    /// How long the guest took to flush its writes, and the save itself.
    pub flush_ms: u64,
    pub save_ms: u64,
}

/// A file's length and modification time, to notice a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskStamp {
    pub size_bytes: u64,
    pub modified_unix_ns: u128,
}

impl DiskStamp {
    pub fn of(path: &Path) -> std::io::Result<DiskStamp> {
        let meta = std::fs::metadata(path)?;
        let modified_unix_ns = meta
            .modified()?
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        Ok(DiskStamp {
            size_bytes: meta.len(),
            modified_unix_ns,
        })
    }
}

/// What the machine is now, for [`SavedHeader::check`].
#[derive(Debug, Clone)]
pub struct Expected<'a> {
    pub backend: &'a str,
    pub image: &'a str,
    pub settings: &'a serde_json::Value,
    pub devices: &'a [String],
    pub data_disk: DiskStamp,
}

/// Why a saved state is not resumed (the machine boots cold; the state is discarded).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refusal {
    #[error("the saved state is incomplete: its save did not finish (no header)")]
    Incomplete,
    #[error("the saved state's header names a state file that is missing")]
    StateMissing,
    #[error("the saved state cannot be read: {0}")]
    Unreadable(String),
    #[error("the saved state's header is damaged ({0})")]
    Garbage(String),
    #[error("the saved state has format version {found}; this rmachine resumes version {SAVED_VERSION} only")]
    Version { found: u32 },
    #[error("the saved state is damaged: {found} bytes where its header says {expected} (truncated or overwritten)")]
    Size { expected: u64, found: u64 },
    #[error("the saved state was made by {saved}; this machine now runs on {now}")]
    Backend { saved: String, now: String },
    #[error("the guest image changed since the save ({saved} -> {now})")]
    Image { saved: String, now: String },
    #[error("the machine's settings changed since the save ({})", .0.join(", "))]
    Settings(Vec<String>),
    #[error("the VM's devices differ from the saved VM's (rmachine changed how it runs the VM)")]
    Devices,
    #[error("the data disk changed since the save")]
    DataDisk,
    #[error("the saved state was made by QEMU {saved}; this QEMU is {now}")]
    VmmVersion { saved: String, now: String },
}

/// Whether a machine folder holds a saved state, and what it says (for listings).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SavedSummary {
    pub saved_at_unix: u64,
    pub size_bytes: u64,
    pub save_ms: u64,
    /// The header could not be read: the next start boots cold, for this reason.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub damaged: Option<String>,
}

impl SavedHeader {
    /// Whether this state may be resumed into the machine as it is `now`.
    pub fn check(&self, now: &Expected<'_>, state_size_bytes: u64) -> Result<(), Refusal> {
        if self.version != SAVED_VERSION {
            return Err(Refusal::Version {
                found: self.version,
            });
        }
        if state_size_bytes != self.state_size_bytes {
            return Err(Refusal::Size {
                expected: self.state_size_bytes,
                found: state_size_bytes,
            });
        }
        if self.backend != now.backend {
            return Err(Refusal::Backend {
                saved: self.backend.clone(),
                now: now.backend.into(),
            });
        }
        if self.image != now.image {
            return Err(Refusal::Image {
                saved: self.image.clone(),
                now: now.image.into(),
            });
        }
        let changed = changed_keys(&self.settings, now.settings);
        if !changed.is_empty() {
            return Err(Refusal::Settings(changed));
        }
        if self.devices != now.devices {
            return Err(Refusal::Devices);
        }
        if self.data_disk != now.data_disk {
            return Err(Refusal::DataDisk);
        }
        Ok(())
    }

    /// Whether the VMM that is to load the state is the one that saved it.
    pub fn check_vmm_version(&self, now: &str) -> Result<(), Refusal> {
        if self.vmm_version == now {
            Ok(())
        } else {
            Err(Refusal::VmmVersion {
                saved: self.vmm_version.clone(),
                now: now.into(),
            })
        }
    }
}

/// The top-level settings whose values differ (all of them when either is no object).
fn changed_keys(saved: &serde_json::Value, now: &serde_json::Value) -> Vec<String> {
    match (saved.as_object(), now.as_object()) {
        (Some(a), Some(b)) => {
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            keys.into_iter()
                .filter(|k| a.get(*k) != b.get(*k))
                .cloned()
                .collect()
        }
        _ if saved == now => Vec::new(),
        _ => vec!["all".into()],
    }
}

/// Reads the saved state's header, or `None` when the folder holds no saved state. A
/// state file without a header is [`Refusal::Incomplete`].
pub fn read(files: &MachinePaths) -> Result<Option<SavedHeader>, Refusal> {
    let header_path = files.saved_header();
    let bytes = match read_limited(&header_path) {
        Ok(b) => b,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return if files.saved_state().exists() {
                Err(Refusal::Incomplete)
            } else {
                Ok(None)
            };
        }
        Err(e) => {
            return Err(Refusal::Unreadable(format!(
                "{}: {e}",
                header_path.display()
            )))
        }
    };
    parse(&bytes).map(Some)
}

/// The header from its bytes.
pub fn parse(bytes: &[u8]) -> Result<SavedHeader, Refusal> {
    // The version first, so that another version's other fields say "version", not
    // "unknown field".
    #[derive(Deserialize)]
    struct Versioned {
        version: u32,
    }
    let versioned: Versioned =
        serde_json::from_slice(bytes).map_err(|e| Refusal::Garbage(e.to_string()))?;
    if versioned.version != SAVED_VERSION {
        return Err(Refusal::Version {
            found: versioned.version,
        });
    }
    serde_json::from_slice(bytes).map_err(|e| Refusal::Garbage(e.to_string()))
}

fn read_limited(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(MAX_HEADER_BYTES)
        .read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// The saved state, checked against the machine `now`: its header when it may be
/// resumed, `None` when there is none.
pub fn load(files: &MachinePaths, now: &Expected<'_>) -> Result<Option<SavedHeader>, Refusal> {
    let Some(header) = read(files)? else {
        return Ok(None);
    };
    let size = match std::fs::metadata(files.saved_state()) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == ErrorKind::NotFound => return Err(Refusal::StateMissing),
        Err(e) => return Err(Refusal::Unreadable(e.to_string())),
    };
    header.check(now, size)?;
    Ok(Some(header))
}

/// What a listing says of the machine's saved state, if it has one.
pub fn summary(files: &MachinePaths) -> Option<SavedSummary> {
    match read(files) {
        Ok(None) => None,
        Ok(Some(h)) => {
            // The cheap part of the check: the state file is there, whole.
            let size = std::fs::metadata(files.saved_state()).map(|m| m.len());
            let damaged = match size {
                Ok(found) if found == h.state_size_bytes => None,
                Ok(found) => Some(Refusal::Size {
                    expected: h.state_size_bytes,
                    found,
                }),
                Err(_) => Some(Refusal::StateMissing),
            };
            Some(SavedSummary {
                saved_at_unix: h.saved_at_unix,
                size_bytes: h.state_size_bytes,
                save_ms: h.save_ms,
                damaged: damaged.map(|r| r.to_string()),
            })
        }
        Err(refusal) => Some(SavedSummary {
            saved_at_unix: 0,
            size_bytes: std::fs::metadata(files.saved_state())
                .map(|m| m.len())
                .unwrap_or(0),
            save_ms: 0,
            damaged: Some(refusal.to_string()),
        }),
    }
}

/// Writes the header: the save is complete from here on.
pub fn write_header(files: &MachinePaths, header: &SavedHeader) -> std::io::Result<()> {
    let bytes = serde_json::to_vec_pretty(header).expect("a header always serializes");
    crate::store::write_atomic(&files.saved_header(), &bytes)
}

/// Removes the saved state: the header first (without it, what is left is never
/// resumed), then the state file. Returns whether there was one.
pub fn discard(files: &MachinePaths) -> std::io::Result<bool> {
    let mut had = false;
    for path in [files.saved_header(), files.saved_state()] {
        match std::fs::remove_file(&path) {
            Ok(()) => had = true,
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(had)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::paths::Paths;

    fn files() -> (tempfile::TempDir, MachinePaths) {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::with_roots(dir.path().join("home"), dir.path().join("cache"));
        let files = paths.machine("m");
        std::fs::create_dir_all(files.dir()).unwrap();
        (dir, files)
    }

    fn settings() -> serde_json::Value {
        serde_json::json!({"cpus": 2, "memory_mib": 2048, "mounts": []})
    }

    fn header() -> SavedHeader {
        SavedHeader {
            version: SAVED_VERSION,
            backend: "qemu".into(),
            vmm_version: "7.2.22".into(),
            image: "0.1.0-amd64-abc".into(),
            settings: settings(),
            devices: vec!["-m".into(), "2048M".into()],
            token: "00ff".into(),
            state_size_bytes: 5,
            data_disk: DiskStamp {
                size_bytes: 10,
                modified_unix_ns: 7,
            },
            saved_at_unix: 1,
            flush_ms: 2,
            save_ms: 3,
        }
    }

    fn now<'a>(settings: &'a serde_json::Value, devices: &'a [String]) -> Expected<'a> {
        Expected {
            backend: "qemu",
            image: "0.1.0-amd64-abc",
            settings,
            devices,
            data_disk: header().data_disk,
        }
    }

    fn save(files: &MachinePaths, h: &SavedHeader, state: &[u8]) {
        std::fs::write(files.saved_state(), state).unwrap();
        write_header(files, h).unwrap();
    }

    #[test]
    fn test_a_complete_matching_state_loads() {
        let (_d, files) = files();
        let (s, d) = (settings(), header().devices);
        assert_eq!(load(&files, &now(&s, &d)), Ok(None), "no state yet");
        save(&files, &header(), b"12345");
        assert_eq!(load(&files, &now(&s, &d)), Ok(Some(header())));
        assert_eq!(summary(&files).unwrap().size_bytes, 5);
        assert!(discard(&files).unwrap());
        assert_eq!(load(&files, &now(&s, &d)), Ok(None));
        assert!(!discard(&files).unwrap());
        assert!(summary(&files).is_none());
    }

    #[test]
    fn test_a_truncated_or_unfinished_state_is_refused() {
        let (_d, files) = files();
        let (s, d) = (settings(), header().devices);
        save(&files, &header(), b"123");
        assert!(summary(&files)
            .unwrap()
            .damaged
            .unwrap()
            .contains("truncated"));
        assert_eq!(
            load(&files, &now(&s, &d)),
            Err(Refusal::Size {
                expected: 5,
                found: 3
            })
        );
        assert!(load(&files, &now(&s, &d))
            .unwrap_err()
            .to_string()
            .contains("truncated"));
        // A state file without its header: the save never finished.
        std::fs::remove_file(files.saved_header()).unwrap();
        assert_eq!(load(&files, &now(&s, &d)), Err(Refusal::Incomplete));
        assert!(summary(&files).unwrap().damaged.is_some());
        // A header without its state file.
        save(&files, &header(), b"12345");
        std::fs::remove_file(files.saved_state()).unwrap();
        assert_eq!(load(&files, &now(&s, &d)), Err(Refusal::StateMissing));
    }

    #[test]
    fn test_another_version_or_garbage_is_refused() {
        let (_d, files) = files();
        let (s, d) = (settings(), header().devices);
        // A future version with fields this one does not know: named by its version.
        let mut future = serde_json::to_value(header()).unwrap();
        future["version"] = 2.into();
        future["compression"] = "zstd".into();
        std::fs::write(files.saved_state(), b"12345").unwrap();
        std::fs::write(files.saved_header(), future.to_string()).unwrap();
        assert_eq!(
            load(&files, &now(&s, &d)),
            Err(Refusal::Version { found: 2 })
        );
        for garbage in [&b"\x00\xff\x10garbage"[..], b"{}", b"{\"version\":1}", b""] {
            std::fs::write(files.saved_header(), garbage).unwrap();
            match load(&files, &now(&s, &d)) {
                Err(Refusal::Garbage(why)) => assert!(!why.is_empty()),
                other => panic!("{:?} gave {other:?}", String::from_utf8_lossy(garbage)),
            }
        }
        // Ours, but with a field too many.
        let mut odd = serde_json::to_value(header()).unwrap();
        odd["extra"] = 1.into();
        std::fs::write(files.saved_header(), odd.to_string()).unwrap();
        assert!(matches!(
            load(&files, &now(&s, &d)),
            Err(Refusal::Garbage(_))
        ));
    }

    #[test]
    fn test_changed_settings_image_devices_disk_or_qemu_are_refused() {
        let h = header();
        let (s, d) = (settings(), h.devices.clone());
        assert_eq!(h.check(&now(&s, &d), 5), Ok(()));

        let mut more = settings();
        more["cpus"] = 4.into();
        more["networks"] = serde_json::json!(["swarm"]);
        let refusal = h.check(&now(&more, &d), 5).unwrap_err();
        assert_eq!(
            refusal,
            Refusal::Settings(vec!["cpus".into(), "networks".into()])
        );
        assert_eq!(
            refusal.to_string(),
            "the machine's settings changed since the save (cpus, networks)"
        );

        let mut other_image = now(&s, &d);
        other_image.image = "0.1.0-amd64-def";
        assert!(matches!(
            h.check(&other_image, 5),
            Err(Refusal::Image { .. })
        ));
        let mut vmm = now(&s, &d);
        vmm.backend = "vmm";
        assert!(matches!(h.check(&vmm, 5), Err(Refusal::Backend { .. })));
        let other_devices = vec!["-m".to_string(), "4096M".to_string()];
        assert_eq!(h.check(&now(&s, &other_devices), 5), Err(Refusal::Devices));
        let mut written = now(&s, &d);
        written.data_disk.modified_unix_ns += 1;
        assert_eq!(h.check(&written, 5), Err(Refusal::DataDisk));

        assert_eq!(h.check_vmm_version("7.2.22"), Ok(()));
        assert_eq!(
            h.check_vmm_version("8.2.0").unwrap_err().to_string(),
            "the saved state was made by QEMU 7.2.22; this QEMU is 8.2.0"
        );
    }

    #[cfg(unix)]
    #[test]
    fn test_the_header_is_its_owners_alone() {
        use std::os::unix::fs::PermissionsExt;
        let (_d, files) = files();
        save(&files, &header(), b"12345");
        let mode = std::fs::metadata(files.saved_header())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "it holds the guest link's token");
    }
}
