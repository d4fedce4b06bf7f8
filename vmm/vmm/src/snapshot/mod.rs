//! Snapshots: a paused VM written to a folder, and a VM started from one.
//!
//! A snapshot folder holds two files:
//! - `vm.state`: a header (magic `RMVMSNAP`, format version, length and CRC-32 of the
//!   document) and a JSON document ([`state::SnapshotState`]): the VM's settings (vCPUs,
//!   memory, the virtio devices by slot), each vCPU's registers, MSRs, LAPIC, xsave, CPUID,
//!   events and TSC frequency, the interrupt controllers, the PIT and kvmclock, the UART,
//!   i8042 and CMOS, and each virtio device's transport registers, negotiated features, queue
//!   addresses and positions, and its own state.
//! - `memory`: guest memory, its regions one after the other, sparse (only the pages the
//!   guest touched that are not all zero are written; see [`memory`]).
//!
//! `PUT /vm/snapshot` pauses the VM, saves, and leaves it paused: the disks must not move on
//! from the memory image before it is restored, so the caller powers the VM off (or resumes it
//! when it will not restore that snapshot). `rmachine-vmm --config FILE --restore DIR` starts
//! the VM from a snapshot instead of booting: the configuration must describe the same VM
//! (checked, naming the first difference), and the host ends (disks, passt, the vsock socket)
//! are opened afresh. Exit status [`RESTORE_REFUSED_EXIT`] says the snapshot was refused before
//! anything ran, so the caller can boot cold with the same configuration.

pub mod file;
pub mod memory;
pub mod state;

use std::fs::File;
use std::path::{Path, PathBuf};

use crate::config::ResolvedConfig;
use state::{Settings, SnapshotState};

/// The state file's name in a snapshot folder.
pub const STATE_FILE: &str = "vm.state";
/// The memory file's name in a snapshot folder.
pub const MEMORY_FILE: &str = "memory";
/// Exit status of `rmachine-vmm --restore` when the snapshot is refused (missing, corrupt,
/// another format version, other settings) before the VM was created: boot cold instead.
pub const RESTORE_REFUSED_EXIT: u8 = 3;

/// Errors of taking or reading a snapshot; each says what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// A file could not be opened or read.
    #[error("cannot read {0}")]
    Open(String, #[source] std::io::Error),
    /// Writing or reading failed at a step.
    #[error("cannot {0}")]
    Io(&'static str, #[source] std::io::Error),
    /// The state file does not start with the magic.
    #[error("the state file is not an rmachine-vmm snapshot (no RMVMSNAP magic)")]
    NotASnapshot,
    /// Another format version.
    #[error(
        "the snapshot has format version {found}; this rmachine-vmm reads version {supported}"
    )]
    FormatVersion {
        /// The file's version.
        found: u32,
        /// Ours.
        supported: u32,
    },
    /// A file is shorter than it says.
    #[error("the {what} is truncated: {have} of {want} bytes")]
    Truncated {
        /// Which part.
        what: &'static str,
        /// Bytes present.
        have: u64,
        /// Bytes expected.
        want: u64,
    },
    /// The content is inconsistent.
    #[error("the snapshot is corrupt: {0}")]
    Corrupt(String),
    /// The snapshot was taken with other settings than the configuration's.
    #[error("the snapshot does not match the configuration: {0}")]
    Settings(String),
    /// The document could not be encoded.
    #[error("cannot encode the state document")]
    Encode(#[source] serde_json::Error),
    /// Something of the VM could not be saved (a device that cannot, a vCPU that failed).
    #[error("cannot save {what}: {why}")]
    Save {
        /// The part.
        what: String,
        /// Why.
        why: String,
    },
    /// Something could not be restored into the new VM.
    #[error("cannot restore {what}: {why}")]
    Restore {
        /// The part.
        what: String,
        /// Why.
        why: String,
    },
}

/// A snapshot read and checked against a configuration, with its memory file open: what
/// `--restore` starts from. Opened before the VM is created (and before a jail hides the
/// folder).
pub struct LoadedSnapshot {
    /// The folder.
    pub dir: PathBuf,
    /// The state document.
    pub state: SnapshotState,
    /// The memory file.
    pub memory: File,
}

impl LoadedSnapshot {
    /// Reads `dir`'s state file, checks it against `config`, and opens the memory file.
    pub fn open(dir: &Path, config: &ResolvedConfig) -> Result<Self, SnapshotError> {
        let state = file::read(&dir.join(STATE_FILE))?;
        if let Some(why) = state.settings.mismatch(&Settings::of(config)) {
            return Err(SnapshotError::Settings(why));
        }
        if state.vcpus.len() != usize::from(config.vcpus) {
            return Err(SnapshotError::Corrupt(format!(
                "{} vcpu states for {} vcpus",
                state.vcpus.len(),
                config.vcpus
            )));
        }
        let memory_path = dir.join(MEMORY_FILE);
        let memory = File::open(&memory_path)
            .map_err(|e| SnapshotError::Open(memory_path.display().to_string(), e))?;
        let len = memory
            .metadata()
            .map_err(|e| SnapshotError::Open(memory_path.display().to_string(), e))?
            .len();
        if len < state.memory.size_bytes {
            return Err(SnapshotError::Truncated {
                what: "memory file",
                have: len,
                want: state.memory.size_bytes,
            });
        }
        if state.memory.size_bytes != config.memory_bytes {
            return Err(SnapshotError::Corrupt(format!(
                "the memory file holds {} bytes for {} MiB of guest memory",
                state.memory.size_bytes,
                config.memory_bytes >> 20
            )));
        }
        Ok(LoadedSnapshot {
            dir: dir.to_path_buf(),
            state,
            memory,
        })
    }
}
