//! `machine.toml` (settings the user may edit) and the global `defaults.toml`, merged into
//! one resolved [`MachineSpec`]. Precedence, lowest first: built-in, `defaults.toml`,
//! `machine.toml`, command-line flags.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use crate::platform::Arch;

/// Version of the `machine.toml` format written by this build.
pub const CONFIG_VERSION: u32 = 1;

/// Which driver runs a machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DriverKind {
    /// `vmm` where it can boot the guest, else `qemu`.
    #[default]
    Auto,
    /// rmachine-vmm, our own VMM.
    Vmm,
    /// QEMU `-M microvm`.
    Qemu,
    /// An existing Linux host over SSH (settings in `[ssh]`).
    Ssh,
    /// For tests of the layers above: no VM at all.
    Fake,
}

impl DriverKind {
    /// The drivers a user can name (`--driver`, `config set driver`).
    pub const NAMES: &'static str = "auto, vmm, qemu, ssh or fake";

    /// Parses a driver name.
    pub fn parse(name: &str) -> Result<DriverKind, String> {
        match name {
            "auto" => Ok(DriverKind::Auto),
            "vmm" => Ok(DriverKind::Vmm),
            "qemu" => Ok(DriverKind::Qemu),
            "ssh" => Ok(DriverKind::Ssh),
            "fake" => Ok(DriverKind::Fake),
            other => Err(format!(
                "unknown driver {other:?}: use {}",
                DriverKind::NAMES
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            DriverKind::Auto => "auto",
            DriverKind::Vmm => "vmm",
            DriverKind::Qemu => "qemu",
            DriverKind::Ssh => "ssh",
            DriverKind::Fake => "fake",
        }
    }
}

/// A shared host folder (virtio-fs), mounted in the guest at the same path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MountSpec {
    pub path: PathBuf,
    #[serde(default)]
    pub read_only: bool,
}

/// Settings of one machine or of the defaults; every field optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Format version: required in `machine.toml` (see [`migrate`]), absent in
    /// `defaults.toml`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
    /// Driver; default `auto`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub driver: Option<DriverKind>,
    /// Virtual CPUs; default 2.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpus: Option<u32>,
    /// Guest memory in MiB; default 2048.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<u32>,
    /// Data disk size in GiB (sparse); default 64.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk_size_gib: Option<u32>,
    /// Guest image version; default the newest installed of the machine's architecture.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Guest architecture (`amd64`, `arm64`); default the host's. Another architecture
    /// than the host's runs under QEMU's software emulation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arch: Option<Arch>,
    /// An OCI reference (`REGISTRY/REPOSITORY:TAG`, as `rmachine image push` made it) that
    /// a start pulls the guest image from when none of the machine's architecture is
    /// installed; default none (the start then fails saying how to get one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_source: Option<String>,
    /// Shared folders; default none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mounts: Option<Vec<MountSpec>>,
    /// The remote host of an `ssh` machine; none for a VM.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ssh: Option<crate::ssh::SshSettings>,
    /// Networks between machines the machine joins (`rmachine network create`); default
    /// none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub networks: Option<Vec<String>>,
    /// The engine's settings (`daemon.json`, see `engine_settings`); default none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub engine: Option<serde_json::Map<String, serde_json::Value>>,
}

/// The resolved settings a machine runs with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineSpec {
    pub driver: DriverKind,
    pub cpus: u32,
    pub memory_mib: u32,
    pub disk_size_gib: u32,
    pub image: Option<String>,
    pub arch: Arch,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_source: Option<String>,
    pub mounts: Vec<MountSpec>,
    pub ssh: Option<crate::ssh::SshSettings>,
    #[serde(default)]
    pub networks: Vec<String>,
    #[serde(default)]
    pub engine: serde_json::Map<String, serde_json::Value>,
}

/// Why settings are not usable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {0}")]
    Read(PathBuf, #[source] std::io::Error),
    #[error("{path} is not valid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path} has format version {found}; this rmachine reads up to {CONFIG_VERSION} (upgrade rmachine)")]
    FutureVersion { path: PathBuf, found: u32 },
    #[error("cannot write {0}")]
    Write(PathBuf, #[source] std::io::Error),
    #[error("invalid {field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
}

pub const DEFAULT_CPUS: u32 = 2;
pub const DEFAULT_MEMORY_MIB: u32 = 2048;
pub const DEFAULT_DISK_SIZE_GIB: u32 = 64;

impl Settings {
    /// `other`'s fields where set, else ours.
    pub fn overlay(&self, other: &Settings) -> Settings {
        Settings {
            version: None,
            driver: other.driver.or(self.driver),
            cpus: other.cpus.or(self.cpus),
            memory_mib: other.memory_mib.or(self.memory_mib),
            disk_size_gib: other.disk_size_gib.or(self.disk_size_gib),
            image: other.image.clone().or_else(|| self.image.clone()),
            arch: other.arch.or(self.arch),
            image_source: (other.image_source.clone()).or_else(|| self.image_source.clone()),
            mounts: other.mounts.clone().or_else(|| self.mounts.clone()),
            ssh: other.ssh.clone().or_else(|| self.ssh.clone()),
            networks: other.networks.clone().or_else(|| self.networks.clone()),
            engine: other.engine.clone().or_else(|| self.engine.clone()),
        }
    }

    /// Checks each set field against what a machine can have.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field, message: String| Err(ConfigError::Invalid { field, message });
        if let Some(c) = self.cpus {
            let host = std::thread::available_parallelism()
                .map(|n| n.get() as u32)
                .unwrap_or(1);
            if c == 0 || c > host.max(1) {
                return invalid(
                    "cpus",
                    format!("{c}: must be between 1 and the host's {host} CPUs"),
                );
            }
        }
        if let Some(m) = self.memory_mib {
            let host = host_memory_mib();
            if m < 512 {
                return invalid("memory", format!("{m} MiB: at least 512 MiB"));
            }
            if let Some(host) = host.filter(|&h| u64::from(m) > h) {
                return invalid(
                    "memory",
                    format!("{m} MiB: more than the host's {host} MiB"),
                );
            }
        }
        if let Some(d) = self.disk_size_gib {
            if !(4..=4096).contains(&d) {
                return invalid("disk", format!("{d} GiB: must be between 4 and 4096 GiB"));
            }
        }
        crate::ssh::validate_settings(self.driver, self.ssh.as_ref())?;
        // An ssh machine's engine is the host's own: its daemon.json and networks are the
        // host's business, not this machine's settings.
        if self.driver == Some(DriverKind::Ssh) {
            if self.engine.as_ref().is_some_and(|e| !e.is_empty()) {
                return invalid(
                    "engine",
                    "an ssh machine's engine settings are its host's /etc/docker/daemon.json"
                        .into(),
                );
            }
            if self.networks.as_ref().is_some_and(|n| !n.is_empty()) {
                return invalid(
                    "networks",
                    "an ssh machine cannot join rmachine networks (they connect local VMs)".into(),
                );
            }
        }
        if let Some(engine) = &self.engine {
            crate::engine_settings::validate(engine).map_err(|message| ConfigError::Invalid {
                field: "engine",
                message,
            })?;
        }
        if let Some(source) = &self.image_source {
            crate::image_registry::check_reference(source).map_err(|e| ConfigError::Invalid {
                field: "image-source",
                message: e.to_string(),
            })?;
        }
        for n in self.networks.iter().flatten() {
            if crate::store::validate_name(n).is_err() {
                return invalid("networks", format!("{n:?} is not a network name"));
            }
        }
        for m in self.mounts.iter().flatten() {
            if !m.path.is_absolute()
                || m.path
                    .components()
                    .any(|c| matches!(c, std::path::Component::ParentDir))
            {
                return invalid(
                    "mounts",
                    format!(
                        "{}: must be an absolute path without `..`",
                        m.path.display()
                    ),
                );
            }
            if m.path == Path::new("/") {
                return invalid(
                    "mounts",
                    "/: sharing the whole host file system is not allowed".into(),
                );
            }
        }
        Ok(())
    }

    /// Built-in defaults filled in.
    pub fn resolve(&self) -> MachineSpec {
        MachineSpec {
            driver: self.driver.unwrap_or_default(),
            cpus: self.cpus.unwrap_or(DEFAULT_CPUS),
            memory_mib: self.memory_mib.unwrap_or(DEFAULT_MEMORY_MIB),
            disk_size_gib: self.disk_size_gib.unwrap_or(DEFAULT_DISK_SIZE_GIB),
            image: self.image.clone(),
            arch: self.arch.unwrap_or_else(Arch::host),
            image_source: self.image_source.clone(),
            mounts: self.mounts.clone().unwrap_or_else(default_mounts),
            ssh: self.ssh.clone(),
            networks: self.networks.clone().unwrap_or_default(),
            engine: self.engine.clone().unwrap_or_default(),
        }
    }
}

/// The settings `rmachine config get|set` (and the desktop's Settings) name by key.
/// (`engine.KEY` sets one engine setting: `rmachine config set engine.log-driver local`.)
pub const KEYS: [&str; 9] = [
    "cpus",
    "memory",
    "disk",
    "driver",
    "image",
    "image-source",
    "arch",
    "networks",
    "engine",
];

impl MachineSpec {
    /// One setting as text, in the units `set` takes (`2048M`, `64G`).
    pub fn get(&self, key: &str) -> Result<String, ConfigError> {
        Ok(match key {
            "cpus" => self.cpus.to_string(),
            "memory" => format!("{}M", self.memory_mib),
            "disk" => format!("{}G", self.disk_size_gib),
            "driver" => self.driver.as_str().to_string(),
            "image" => self.image.clone().unwrap_or_else(|| "(newest)".into()),
            "image-source" => self.image_source.clone().unwrap_or_else(|| "(none)".into()),
            "arch" => self.arch.to_string(),
            "ssh-host" => (self.ssh.as_ref())
                .map(|s| s.target().to_string())
                .unwrap_or_else(|| "(not an ssh machine)".into()),
            "networks" => self.networks.join(","),
            "engine" => serde_json::Value::Object(self.engine.clone()).to_string(),
            other => match other.strip_prefix("engine.") {
                Some(name) => self
                    .engine
                    .get(name)
                    .map(|v| v.to_string())
                    .unwrap_or_default(),
                None => return Err(unknown_key(other)),
            },
        })
    }
}

impl Settings {
    /// Sets one setting from text (`memory` and `disk` take units: 4G, 512M) and checks
    /// the result; on an error the settings are left as they were.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), ConfigError> {
        let mut new = self.clone();
        new.set_unchecked(key, value)?;
        new.validate()?;
        *self = new;
        Ok(())
    }

    fn set_unchecked(&mut self, key: &str, value: &str) -> Result<(), ConfigError> {
        let invalid = |field, message: String| ConfigError::Invalid { field, message };
        match key {
            "cpus" => {
                self.cpus = Some(
                    value
                        .parse()
                        .map_err(|_| invalid("cpus", format!("{value:?} is not a number")))?,
                )
            }
            "memory" => self.memory_mib = Some(parse_mib(value).map_err(|m| invalid("memory", m))?),
            "disk" => self.disk_size_gib = Some(parse_gib(value).map_err(|m| invalid("disk", m))?),
            "driver" => {
                self.driver = Some(DriverKind::parse(value).map_err(|m| invalid("driver", m))?)
            }
            // `newest` (or nothing): the newest installed image of the machine's arch.
            "image" => {
                self.image = match value.trim() {
                    "" | "newest" => None,
                    version => Some(version.to_string()),
                }
            }
            // `none` (or nothing): no pull at start.
            "image-source" => {
                self.image_source = match value.trim() {
                    "" | "none" => None,
                    reference => Some(reference.to_string()),
                }
            }
            "arch" => self.arch = Some(Arch::parse(value).map_err(|m| invalid("arch", m))?),
            "ssh-host" => crate::ssh::set_host(&mut self.ssh, value)?,
            // A comma-separated list; empty: none.
            "networks" => {
                self.networks = Some(
                    value
                        .split(',')
                        .map(str::trim)
                        .filter(|n| !n.is_empty())
                        .map(str::to_string)
                        .collect(),
                )
            }
            // The whole of daemon.json as a JSON object; empty: none.
            "engine" => {
                self.engine = match value.trim() {
                    "" => None,
                    text => Some(
                        serde_json::from_str(text)
                            .map_err(|e| invalid("engine", format!("not a JSON object: {e}")))?,
                    ),
                }
            }
            other => match other.strip_prefix("engine.") {
                // One setting; an empty value removes it.
                Some(name) => {
                    let engine = self.engine.get_or_insert_with(Default::default);
                    if value.is_empty() {
                        engine.remove(name);
                    } else {
                        engine.insert(name.to_string(), crate::engine_settings::parse_value(value));
                    }
                }
                None => return Err(unknown_key(other)),
            },
        }
        Ok(())
    }
}

fn unknown_key(key: &str) -> ConfigError {
    ConfigError::Invalid {
        field: "setting",
        message: format!("unknown setting {key:?}: use one of {}", KEYS.join(", ")),
    }
}

/// The default shares: the user's home directory, read-write.
pub fn default_mounts() -> Vec<MountSpec> {
    dirs::home_dir()
        .filter(|h| h.is_absolute() && h.parent().is_some())
        .map(|path| {
            vec![MountSpec {
                path,
                read_only: false,
            }]
        })
        .unwrap_or_default()
}

/// Parses `PATH[:ro|:rw]` (the `--mount` flag).
pub fn parse_mount(text: &str) -> Result<MountSpec, String> {
    let (path, read_only) = match text.rsplit_once(':') {
        Some((p, "ro")) => (p, true),
        Some((p, "rw")) => (p, false),
        _ => (text, false),
    };
    let path = PathBuf::from(path);
    if !path.is_absolute() {
        return Err(format!(
            "{text:?}: the shared folder must be an absolute path"
        ));
    }
    Ok(MountSpec { path, read_only })
}

fn host_memory_mib() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib / 1024)
}

/// Parses a size with an optional unit into MiB (`2048`, `2G`, `2GiB`, `512M`).
pub fn parse_mib(text: &str) -> Result<u32, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{text:?} is not a size (examples: 2048, 2G, 512M)"))?;
    let factor = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "m" | "mb" | "mib" => 1,
        "g" | "gb" | "gib" => 1024,
        _ => return Err(format!("{text:?}: unknown unit (use M or G)")),
    };
    u32::try_from(n * factor).map_err(|_| format!("{text:?} is too large"))
}

/// Parses a size into GiB (`64`, `64G`).
pub fn parse_gib(text: &str) -> Result<u32, String> {
    let t = text.trim();
    let t = t
        .strip_suffix("GiB")
        .or_else(|| t.strip_suffix("GB"))
        .or_else(|| t.strip_suffix('G'))
        .or_else(|| t.strip_suffix('g'))
        .unwrap_or(t);
    t.trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a size in GiB (example: 64G)"))
}

/// Reads `machine.toml`.
pub fn read_machine_file(path: &Path) -> Result<Settings, ConfigError> {
    let text =
        std::fs::read_to_string(path).map_err(|e| ConfigError::Read(path.to_path_buf(), e))?;
    let value: toml::Value = toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let value = migrate(path, value)?;
    // Parsed from text when no migration changed it, so errors point at the line.
    let file: Settings =
        if value.get("version").and_then(|v| v.as_integer()) == Some(i64::from(CONFIG_VERSION)) {
            toml::from_str(&text)
        } else {
            value.try_into()
        }
        .map_err(|e: toml::de::Error| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    file.validate().map_err(|e| ConfigError::Parse {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    Ok(file)
}

/// Brings an older `machine.toml` to [`CONFIG_VERSION`]. Version 1 is the first format.
pub fn migrate(path: &Path, value: toml::Value) -> Result<toml::Value, ConfigError> {
    let found = value
        .get("version")
        .and_then(|v| v.as_integer())
        .ok_or_else(|| ConfigError::Parse {
            path: path.to_path_buf(),
            message: "missing `version`".into(),
        })?;
    match u32::try_from(found) {
        Ok(CONFIG_VERSION) => Ok(value),
        Ok(v) if v > CONFIG_VERSION => Err(ConfigError::FutureVersion {
            path: path.to_path_buf(),
            found: v,
        }),
        _ => Err(ConfigError::Parse {
            path: path.to_path_buf(),
            message: format!("unknown format version {found}"),
        }),
    }
}

/// Writes `machine.toml` atomically.
pub fn write_machine_file(path: &Path, settings: &Settings) -> Result<(), ConfigError> {
    let file = Settings {
        version: Some(CONFIG_VERSION),
        ..settings.clone()
    };
    let text = format!(
        "# rmachine machine settings; changes apply at the next start.\n{}",
        toml::to_string(&file).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string()
        })?
    );
    crate::store::write_atomic(path, text.as_bytes())
        .map_err(|e| ConfigError::Write(path.to_path_buf(), e))
}

/// Reads `defaults.toml` (missing: no defaults).
pub fn read_defaults(path: &Path) -> Result<Settings, ConfigError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Settings::default()),
        Err(e) => return Err(ConfigError::Read(path.to_path_buf(), e)),
    };
    let s: Settings = toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    s.validate().map_err(|e| ConfigError::Parse {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    Ok(s)
}

/// Writes `defaults.toml`.
pub fn write_defaults(path: &Path, settings: &Settings) -> Result<(), ConfigError> {
    let text = toml::to_string(settings).map_err(|e| ConfigError::Parse {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    crate::store::write_atomic(path, text.as_bytes())
        .map_err(|e| ConfigError::Write(path.to_path_buf(), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_precedence_builtin_defaults_file_flags() {
        let defaults = Settings {
            cpus: Some(1),
            memory_mib: Some(1024),
            ..Default::default()
        };
        let file = Settings {
            memory_mib: Some(1536),
            ..Default::default()
        };
        let flags = Settings {
            disk_size_gib: Some(10),
            ..Default::default()
        };
        let spec = defaults.overlay(&file).overlay(&flags).resolve();
        assert_eq!(spec.cpus, 1);
        assert_eq!(spec.memory_mib, 1536);
        assert_eq!(spec.disk_size_gib, 10);
        assert_eq!(spec.driver, DriverKind::Auto);
    }

    #[test]
    fn test_invalid_values_name_the_field() {
        for (s, field) in [
            (
                Settings {
                    cpus: Some(0),
                    ..Default::default()
                },
                "cpus",
            ),
            (
                Settings {
                    cpus: Some(100_000),
                    ..Default::default()
                },
                "cpus",
            ),
            (
                Settings {
                    memory_mib: Some(16),
                    ..Default::default()
                },
                "memory",
            ),
            (
                Settings {
                    memory_mib: Some(u32::MAX),
                    ..Default::default()
                },
                "memory",
            ),
            (
                Settings {
                    disk_size_gib: Some(1),
                    ..Default::default()
                },
                "disk",
            ),
            (
                Settings {
                    mounts: Some(vec![MountSpec {
                        path: "rel".into(),
                        read_only: false,
                    }]),
                    ..Default::default()
                },
                "mounts",
            ),
        ] {
            match s.validate() {
                Err(ConfigError::Invalid { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{s:?} gave {other:?}"),
            }
        }
    }

    #[test]
    fn test_machine_file_round_trip_and_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("machine.toml");
        let file = Settings {
            version: Some(CONFIG_VERSION),
            cpus: Some(1),
            driver: Some(DriverKind::Qemu),
            ..Default::default()
        };
        write_machine_file(&path, &file).unwrap();
        assert_eq!(read_machine_file(&path).unwrap(), file);
        std::fs::write(&path, "version = 1\ncpus = \"many\"\n").unwrap();
        let err = read_machine_file(&path).unwrap_err().to_string();
        assert!(
            err.contains("machine.toml") && err.contains("cpus"),
            "{err}"
        );
        std::fs::write(&path, "version = 1\ncolour = \"red\"\n").unwrap();
        assert!(read_machine_file(&path)
            .unwrap_err()
            .to_string()
            .contains("colour"));
        std::fs::write(&path, "version = 9\n").unwrap();
        assert!(matches!(
            read_machine_file(&path),
            Err(ConfigError::FutureVersion { found: 9, .. })
        ));
        std::fs::write(&path, "\u{0}\u{1}garbage[[").unwrap();
        assert!(matches!(
            read_machine_file(&path),
            Err(ConfigError::Parse { .. })
        ));
    }

    #[test]
    fn test_mount_flag_and_default_share() {
        // An absolute path of this platform (`/tmp/src`, `C:\...\src`).
        let src = std::env::temp_dir().join("src");
        assert_eq!(
            parse_mount(&format!("{}:ro", src.display())),
            Ok(MountSpec {
                path: src.clone(),
                read_only: true
            })
        );
        assert_eq!(
            parse_mount(&src.display().to_string()),
            Ok(MountSpec {
                path: src,
                read_only: false
            })
        );
        assert!(parse_mount("src").is_err());
        if let Some(home) = dirs::home_dir().filter(|h| h.parent().is_some()) {
            assert_eq!(
                Settings::default().resolve().mounts,
                vec![MountSpec {
                    path: home,
                    read_only: false
                }]
            );
        }
        let none = Settings {
            mounts: Some(vec![]),
            ..Default::default()
        };
        assert!(none.resolve().mounts.is_empty());
        let root = Settings {
            mounts: Some(vec![MountSpec {
                path: "/".into(),
                read_only: false,
            }]),
            ..Default::default()
        };
        assert!(root.validate().is_err());
    }

    #[test]
    fn test_size_parsing() {
        assert_eq!(parse_mib("2048"), Ok(2048));
        assert_eq!(parse_mib("2G"), Ok(2048));
        assert_eq!(parse_mib("512MiB"), Ok(512));
        assert!(parse_mib("2T").is_err());
        assert!(parse_mib("lots").is_err());
        assert_eq!(parse_gib("64G"), Ok(64));
        assert!(parse_gib("-1").is_err());
    }

    #[test]
    fn test_settings_by_key_parse_and_validate() {
        let mut s = Settings::default();
        s.set("memory", "1G").unwrap();
        assert_eq!(s.memory_mib, Some(1024));
        s.set("driver", "qemu").unwrap();
        assert_eq!(s.driver, Some(DriverKind::Qemu));
        assert!(s
            .set("cpus", "many")
            .unwrap_err()
            .to_string()
            .contains("cpus"));
        assert!(s.set("memory", "1M").is_err());
        assert!(s
            .set("driver", "xen")
            .unwrap_err()
            .to_string()
            .contains("unknown driver"));
        assert!(s
            .set("colour", "red")
            .unwrap_err()
            .to_string()
            .contains("unknown setting"));
        let spec = s.resolve();
        assert_eq!(spec.get("memory").unwrap(), "1024M");
        assert_eq!(spec.get("driver").unwrap(), "qemu");
        assert_eq!(spec.get("image").unwrap(), "(newest)");
        assert!(spec.get("colour").is_err());
        // An image by version, and back to the newest.
        s.set("image", "0.1.0-amd64-abc").unwrap();
        assert_eq!(s.resolve().get("image").unwrap(), "0.1.0-amd64-abc");
        s.set("image", "newest").unwrap();
        assert_eq!(s.image, None);
        s.set("image", "0.1.0-amd64-abc").unwrap();
        s.set("image", "").unwrap();
        assert_eq!(s.image, None);

        // The engine's settings, one at a time or whole, checked.
        let mut s = Settings::default();
        s.set("engine.insecure-registries", "[\"r:5000\"]").unwrap();
        s.set("engine.log-driver", "local").unwrap();
        let spec = s.resolve();
        assert_eq!(spec.get("engine.log-driver").unwrap(), "\"local\"");
        assert!(spec.get("engine").unwrap().contains("r:5000"));
        assert!(s
            .set("engine.hosts", "[\"tcp://0.0.0.0:2375\"]")
            .unwrap_err()
            .to_string()
            .contains("cannot be set"));
        assert!(s.set("engine", "{nope").is_err());
        s.set("engine.log-driver", "").unwrap();
        assert!(!s.resolve().engine.contains_key("log-driver"));
        s.set("engine", "").unwrap();
        assert!(s.resolve().engine.is_empty());
    }

    #[test]
    fn test_arch_defaults_to_the_host_and_is_set_by_name() {
        let mut s = Settings::default();
        assert_eq!(s.resolve().arch, Arch::host());
        assert_eq!(s.resolve().get("arch").unwrap(), Arch::host().as_str());
        s.set("arch", "arm64").unwrap();
        assert_eq!(s.arch, Some(Arch::Arm64));
        assert_eq!(s.resolve().get("arch").unwrap(), "arm64");
        let err = s.set("arch", "riscv64").unwrap_err().to_string();
        assert!(
            err.contains("arch") && err.contains("riscv64") && err.contains("amd64 or arm64"),
            "{err}"
        );
        assert_eq!(s.arch, Some(Arch::Arm64), "a refused value changes nothing");
        // machine.toml carries it; flags override the defaults.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("machine.toml");
        write_machine_file(&path, &s).unwrap();
        assert!(std::fs::read_to_string(&path)
            .unwrap()
            .contains("arch = \"arm64\""));
        assert_eq!(read_machine_file(&path).unwrap().arch, Some(Arch::Arm64));
        std::fs::write(&path, "version = 1\narch = \"sparc\"\n").unwrap();
        let err = read_machine_file(&path).unwrap_err().to_string();
        assert!(err.contains("sparc"), "{err}");
        let defaults = Settings {
            arch: Some(Arch::Amd64),
            ..Default::default()
        };
        assert_eq!(defaults.overlay(&s).resolve().arch, Arch::Arm64);
    }
}
