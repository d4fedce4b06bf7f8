//! The state document of a snapshot (serde): the VM's settings, which a restore checks against
//! its configuration, and every saved part.

use serde::{Deserialize, Serialize};

use devices::legacy::persist::{CmosState, I8042State};
use devices::transport::TransportSnapshot;
use hypervisor::x86_64::{ClockState, CpuidEntry, MsrEntry, VcpuState, VmState};

use crate::config::{ResolvedConfig, SlotDevice};
use crate::device_manager::ConsoleState;

/// Everything but guest memory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotState {
    /// The rmachine-vmm version that wrote it (informational).
    pub vmm_version: String,
    /// When it was taken, milliseconds since the epoch (informational).
    pub taken_at_unix_ms: u64,
    /// The VM's settings: a restore refuses a configuration that differs.
    pub settings: Settings,
    /// The memory file's layout.
    pub memory: MemoryLayout,
    /// Interrupt controllers, timer and clock.
    pub vm: VmStateDoc,
    /// One per vCPU, in id order.
    pub vcpus: Vec<VcpuStateDoc>,
    /// The console UART.
    pub serial: ConsoleState,
    /// The keyboard controller.
    pub i8042: I8042State,
    /// The CMOS.
    pub cmos: CmosState,
    /// The virtio devices, by slot.
    pub devices: Vec<DeviceDoc>,
}

/// What must match between the snapshot and the configuration it is restored with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// vCPUs.
    pub vcpus: u8,
    /// Guest RAM, MiB.
    pub memory_mib: u64,
    /// Guest memory is one shared memfd (there are virtio-fs devices).
    pub shared_memory: bool,
    /// The virtio devices, by slot.
    pub devices: Vec<DeviceSetting>,
}

/// A virtio device's place.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceSetting {
    /// virtio-mmio slot.
    pub slot: u8,
    /// Kind (`block`, `vsock`, ...).
    pub kind: String,
    /// Id (a disk's id, `vsock`, `net1`, ...).
    pub id: String,
}

impl Settings {
    /// The settings of a configuration.
    pub fn of(config: &ResolvedConfig) -> Self {
        let c = &config.config;
        let devices = config
            .slots
            .iter()
            .map(|(&slot, device)| {
                let (kind, id) = match device {
                    SlotDevice::Disk(i) => ("block", c.disks[*i].id.clone()),
                    SlotDevice::Vsock => ("vsock", "vsock".to_string()),
                    SlotDevice::Rng => ("rng", "rng".to_string()),
                    SlotDevice::Net => ("net", "net".to_string()),
                    SlotDevice::ExtraNet(i) => ("net", format!("net{}", i + 1)),
                    SlotDevice::Balloon => ("balloon", "balloon".to_string()),
                    SlotDevice::Fs(i) => ("fs", format!("fs-{}", c.filesystems[*i].tag)),
                };
                DeviceSetting {
                    slot,
                    kind: kind.to_string(),
                    id,
                }
            })
            .collect();
        Settings {
            vcpus: config.vcpus,
            memory_mib: config.memory_bytes >> 20,
            shared_memory: !c.filesystems.is_empty(),
            devices,
        }
    }

    /// The first difference with `config`'s settings, named by field.
    pub fn mismatch(&self, config: &Settings) -> Option<String> {
        if self.vcpus != config.vcpus {
            return Some(format!(
                "vcpus: the snapshot has {}, the configuration {}",
                self.vcpus, config.vcpus
            ));
        }
        if self.memory_mib != config.memory_mib {
            return Some(format!(
                "memory_mib: the snapshot has {} MiB, the configuration {} MiB",
                self.memory_mib, config.memory_mib
            ));
        }
        if self.shared_memory != config.shared_memory {
            return Some(format!(
                "filesystems: guest memory is {} in the snapshot and {} with the configuration",
                shared_word(self.shared_memory),
                shared_word(config.shared_memory)
            ));
        }
        let describe = |d: &DeviceSetting| format!("{} {:?} in slot {}", d.kind, d.id, d.slot);
        for d in &self.devices {
            match config.devices.iter().find(|c| c.slot == d.slot) {
                Some(c) if c == d => {}
                Some(c) => {
                    return Some(format!(
                        "devices: the snapshot has {}, the configuration {}",
                        describe(d),
                        describe(c)
                    ))
                }
                None => {
                    return Some(format!(
                        "devices: the snapshot has {}, the configuration nothing in that slot",
                        describe(d)
                    ))
                }
            }
        }
        if let Some(c) = config
            .devices
            .iter()
            .find(|c| !self.devices.iter().any(|d| d.slot == c.slot))
        {
            return Some(format!(
                "devices: the configuration has {}, the snapshot nothing in that slot",
                describe(c)
            ));
        }
        None
    }
}

fn shared_word(shared: bool) -> &'static str {
    if shared {
        "shared (virtio-fs)"
    } else {
        "private"
    }
}

/// How guest memory is laid out in the memory file: the regions one after the other.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryLayout {
    /// The file's size, bytes (the sum of the regions).
    pub size_bytes: u64,
    /// `(guest address, length)` of each region, in file order.
    pub regions: Vec<(u64, u64)>,
    /// Bytes of non-zero pages written (the rest are holes).
    pub data_bytes: u64,
}

/// A byte block, hex-encoded in the document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Block {
    /// Name.
    pub name: String,
    /// Bytes, hex.
    pub hex: String,
}

fn to_blocks(blocks: &[(String, Vec<u8>)]) -> Vec<Block> {
    blocks
        .iter()
        .map(|(name, bytes)| Block {
            name: name.clone(),
            hex: hex_encode(bytes),
        })
        .collect()
}

fn from_blocks(blocks: &[Block]) -> Result<Vec<(String, Vec<u8>)>, String> {
    blocks
        .iter()
        .map(|b| {
            hex_decode(&b.hex)
                .map(|bytes| (b.name.clone(), bytes))
                .ok_or_else(|| format!("block {} is not hex", b.name))
        })
        .collect()
}

fn hex_encode(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

fn hex_decode(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    s.as_bytes()
        .chunks(2)
        .map(|p| Some(digit(p[0])? << 4 | digit(p[1])?))
        .collect()
}

/// [`VmState`] as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmStateDoc {
    /// Backend.
    pub backend: String,
    /// kvmclock, ns.
    pub clock_ns: u64,
    /// Flags of the clock reading.
    pub clock_flags: u32,
    /// Host realtime of the reading, ns since the epoch.
    pub host_realtime_ns: u64,
    /// Blocks.
    pub blocks: Vec<Block>,
}

impl VmStateDoc {
    /// The document of `s`.
    pub fn of(s: &VmState) -> Self {
        VmStateDoc {
            backend: s.backend.clone(),
            clock_ns: s.clock.guest_ns,
            clock_flags: s.clock.flags,
            host_realtime_ns: s.clock.host_realtime_ns,
            blocks: to_blocks(&s.blocks),
        }
    }

    /// Back to the hypervisor's type.
    pub fn to_state(&self) -> Result<VmState, String> {
        Ok(VmState {
            backend: self.backend.clone(),
            clock: ClockState {
                guest_ns: self.clock_ns,
                flags: self.clock_flags,
                host_realtime_ns: self.host_realtime_ns,
            },
            blocks: from_blocks(&self.blocks)?,
        })
    }
}

/// [`VcpuState`] as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VcpuStateDoc {
    /// Backend.
    pub backend: String,
    /// `(index, value)` of each MSR, in restore order.
    pub msrs: Vec<(u32, u64)>,
    /// `[function, index, flags, eax, ebx, ecx, edx]` of each CPUID entry.
    pub cpuid: Vec<[u32; 7]>,
    /// TSC frequency, kHz.
    pub tsc_khz: Option<u32>,
    /// Blocks.
    pub blocks: Vec<Block>,
}

impl VcpuStateDoc {
    /// The document of `s`.
    pub fn of(s: &VcpuState) -> Self {
        VcpuStateDoc {
            backend: s.backend.clone(),
            msrs: s.msrs.iter().map(|m| (m.index, m.data)).collect(),
            cpuid: s
                .cpuid
                .iter()
                .map(|e| [e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx])
                .collect(),
            tsc_khz: s.tsc_khz,
            blocks: to_blocks(&s.blocks),
        }
    }

    /// Back to the hypervisor's type.
    pub fn to_state(&self) -> Result<VcpuState, String> {
        Ok(VcpuState {
            backend: self.backend.clone(),
            msrs: self
                .msrs
                .iter()
                .map(|&(index, data)| MsrEntry { index, data })
                .collect(),
            cpuid: self
                .cpuid
                .iter()
                .map(|e| CpuidEntry {
                    function: e[0],
                    index: e[1],
                    flags: e[2],
                    eax: e[3],
                    ebx: e[4],
                    ecx: e[5],
                    edx: e[6],
                })
                .collect(),
            tsc_khz: self.tsc_khz,
            blocks: from_blocks(&self.blocks)?,
        })
    }
}

/// One virtio device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceDoc {
    /// Slot.
    pub slot: u8,
    /// Id.
    pub id: String,
    /// Transport and device.
    pub transport: TransportSnapshot,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_hex_round_trip() {
        let bytes = vec![0u8, 1, 0xab, 0xff];
        assert_eq!(hex_encode(&bytes), "0001abff");
        assert_eq!(hex_decode("0001abff").unwrap(), bytes);
        assert!(hex_decode("0g").is_none());
        assert!(hex_decode("abc").is_none());
    }

    #[test]
    fn test_settings_mismatch_names_the_field() {
        let dev = |slot, kind: &str, id: &str| DeviceSetting {
            slot,
            kind: kind.into(),
            id: id.into(),
        };
        let a = Settings {
            vcpus: 1,
            memory_mib: 128,
            shared_memory: false,
            devices: vec![dev(0, "block", "data"), dev(1, "vsock", "vsock")],
        };
        assert_eq!(a.mismatch(&a.clone()), None);
        let b = Settings {
            memory_mib: 256,
            ..a.clone()
        };
        assert_eq!(
            a.mismatch(&b).unwrap(),
            "memory_mib: the snapshot has 128 MiB, the configuration 256 MiB"
        );
        let c = Settings {
            devices: vec![dev(0, "block", "root"), dev(1, "vsock", "vsock")],
            ..a.clone()
        };
        assert!(a
            .mismatch(&c)
            .unwrap()
            .starts_with("devices: the snapshot has block \"data\""));
        let d = Settings {
            devices: vec![dev(0, "block", "data")],
            ..a.clone()
        };
        assert!(a.mismatch(&d).unwrap().contains("nothing in that slot"));
        let e = Settings {
            vcpus: 2,
            ..a.clone()
        };
        assert!(a.mismatch(&e).unwrap().starts_with("vcpus:"));
    }
}
