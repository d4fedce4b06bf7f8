//! rmachine-vmm's boot document (`--config vm.json`) for a machine, the VMM's counterpart
//! of [`crate::qemu::QemuVm`]: typed here, serialised once, and checked in this module's
//! tests against the VMM's own parser (`vmm::config::VmConfig`, which refuses unknown
//! fields), so the two cannot drift apart silently.

use std::path::PathBuf;

use serde::Serialize;

/// The guest CID rmachine-vmm gives the guest (any value above 2 works: the hybrid
/// socket is per VM).
pub const GUEST_CID: u32 = 3;

/// The whole document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VmmConfig {
    pub vcpus: u32,
    pub memory_mib: u32,
    pub kernel: Kernel,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Cpu>,
    pub serial: Serial,
    pub disks: Vec<Disk>,
    pub vsock: Vsock,
    pub rng: Rng,
    pub balloon: Balloon,
    pub filesystems: Vec<Filesystem>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub net: Option<Net>,
    /// NICs on networks between machines (their switches' sockets).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub extra_nets: Vec<Net>,
    pub api_socket: PathBuf,
    /// Run confined: as this user, in namespaces of its own, seeing only its files.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jail: Option<Jail>,
}

/// Who a jailed rmachine-vmm runs as (its `jail` module says what it sees).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Jail {
    pub uid: u32,
    pub gid: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Kernel {
    pub path: PathBuf,
    pub cmdline: String,
}

/// CPU features hidden from the guest (`/proc/cpuinfo` names).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Cpu {
    pub disable_features: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Serial {
    pub log_path: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Disk {
    pub id: String,
    pub path: PathBuf,
    pub read_only: bool,
}

/// Firecracker's hybrid vsock: the host side is a unix socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Vsock {
    pub guest_cid: u32,
    pub uds_path: PathBuf,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Rng {}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Balloon {
    /// Memory the guest frees goes back to the host.
    pub free_page_reporting: bool,
}

/// A virtio-fs device fed by a vhost-user backend (virtiofsd) at `socket_path`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Filesystem {
    pub tag: String,
    pub socket_path: PathBuf,
}

/// A virtio-net device on a stream backend such as passt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Net {
    pub backend: NetBackend,
    pub socket: PathBuf,
    pub mac: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NetBackend {
    Passt,
}

impl VmmConfig {
    /// The document as rmachine-vmm reads it.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("the boot document always serializes")
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    fn config(
        net: Option<Net>,
        cpu: Option<Cpu>,
    ) -> (
        tempfile::TempDir,
        VmmConfig,
        Vec<std::os::unix::net::UnixListener>,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let p = |name: &str| dir.path().join(name);
        for file in ["bzImage", "root.erofs", "data.img", "config.img"] {
            std::fs::write(p(file), b"x").unwrap();
        }
        let mut listeners = Vec::new();
        for sock in ["fs0.sock", "fs1.sock", "passt.sock", "switch.sock"] {
            listeners.push(std::os::unix::net::UnixListener::bind(p(sock)).unwrap());
        }
        let disk = |id: &str, file: &str, read_only| Disk {
            id: id.into(),
            path: p(file),
            read_only,
        };
        let cfg = VmmConfig {
            vcpus: 2,
            memory_mib: 2048,
            kernel: Kernel {
                path: p("bzImage"),
                cmdline: "console=ttyS0 reboot=k".into(),
            },
            cpu,
            serial: Serial {
                log_path: p("console.log"),
            },
            disks: vec![
                disk("root", "root.erofs", true),
                disk("data", "data.img", false),
                disk("config", "config.img", true),
            ],
            vsock: Vsock {
                guest_cid: GUEST_CID,
                uds_path: p("vsock.sock"),
            },
            rng: Rng {},
            balloon: Balloon {
                free_page_reporting: true,
            },
            filesystems: (0..2)
                .map(|i| Filesystem {
                    tag: format!("share{i}"),
                    socket_path: p(&format!("fs{i}.sock")),
                })
                .collect(),
            net: net.map(|mut n| {
                n.socket = p("passt.sock");
                n
            }),
            extra_nets: vec![Net {
                backend: NetBackend::Passt,
                socket: p("switch.sock"),
                mac: "02:72:6d:01:02:03".into(),
            }],
            api_socket: p("vmm.sock"),
            jail: None,
        };
        (dir, cfg, listeners)
    }

    /// The document is one rmachine-vmm accepts (its own parser and validation: unknown
    /// fields, files, sockets), with every device the host agent asks for.
    #[test]
    fn test_document_is_accepted_by_the_vmm_parser() {
        let net = Net {
            backend: NetBackend::Passt,
            socket: PathBuf::new(),
            mac: "52:54:00:12:34:56".into(),
        };
        let cpu = Cpu {
            disable_features: vec!["tsc_deadline_timer".into()],
        };
        let (_dir, cfg, _l) = config(Some(net), Some(cpu));
        let parsed = vmm::config::VmConfig::from_json(&cfg.to_json()).unwrap();
        let resolved = parsed.validate_with_host_memory(Some(1 << 40)).unwrap();
        let tags: Vec<&str> = parsed.filesystems.iter().map(|f| f.tag.as_str()).collect();
        assert_eq!(tags, ["share0", "share1"]);
        let net = parsed.net.as_ref().expect("a net device");
        assert_eq!(net.backend, vmm::config::NetBackendKind::Passt);
        assert_eq!(
            net.socket.as_deref(),
            Some(cfg.net.as_ref().unwrap().socket.as_path())
        );
        assert_eq!(
            resolved.slots.len(),
            10,
            "3 disks, vsock, rng, balloon, 2 fs, net, a network's NIC: {:?}",
            resolved.slots
        );
        assert_eq!(parsed.extra_nets.len(), 1);
        assert_eq!(
            parsed.extra_nets[0].mac.as_deref(),
            Some("02:72:6d:01:02:03")
        );
        assert_eq!(resolved.cmdline, "console=ttyS0 reboot=k");
        assert_eq!(parsed.vcpus, Some(2));
        assert_eq!(parsed.memory_mib, Some(2048));
        assert!(parsed.disks[0].read_only && !parsed.disks[1].read_only);
        assert_eq!(
            parsed.cpu.as_ref().map(|c| c.disable_features.clone()),
            Some(vec!["tsc_deadline_timer".to_string()])
        );
    }

    #[test]
    fn test_jailed_document_is_accepted_by_the_vmm_parser() {
        let (_dir, mut cfg, _l) = config(None, None);
        cfg.jail = Some(Jail {
            uid: 1_900_000_123,
            gid: 1_900_000_123,
        });
        let parsed = vmm::config::VmConfig::from_json(&cfg.to_json()).unwrap();
        parsed.validate_with_host_memory(Some(1 << 40)).unwrap();
        let jail = parsed.jail.expect("a jail");
        assert_eq!((jail.uid, jail.gid), (1_900_000_123, 1_900_000_123));
        cfg.jail = None;
        assert!(!cfg.to_json().contains("jail"));
    }

    #[test]
    fn test_document_without_net_has_no_net_device() {
        let (_dir, cfg, _l) = config(None, None);
        let parsed = vmm::config::VmConfig::from_json(&cfg.to_json()).unwrap();
        let resolved = parsed.validate_with_host_memory(Some(1 << 40)).unwrap();
        assert!(parsed.net.is_none() && parsed.cpu.is_none());
        assert_eq!(resolved.slots.len(), 9, "{:?}", resolved.slots);
    }
}
