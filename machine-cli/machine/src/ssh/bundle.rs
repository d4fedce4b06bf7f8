//! `rmachine export|import`: an ssh machine as one JSON file, to recreate it on another
//! computer. It carries the settings, the host key pin and the probe record; with
//! `--include-secrets` also the engine's TLS client material (`ca.pem`, `cert.pem`,
//! `key.pem`). Never the machine's CA key: certificates are only ever issued where the
//! machine was created. A key path under the home folder is written `~/…` and made local
//! again on import.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::remote::RemoteRecord;
use super::SshSettings;
use crate::paths::MachinePaths;

/// Version of the bundle format.
pub const BUNDLE_VERSION: u32 = 1;
/// The bundle's `kind`, so that another JSON file is not taken for one.
pub const BUNDLE_KIND: &str = "rmachine-ssh-machine";

/// The TLS client files of `DOCKER_CERT_PATH`.
const CLIENT_FILES: [&str; 3] = ["ca.pem", "cert.pem", "key.pem"];

/// An exported ssh machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bundle {
    pub version: u32,
    pub kind: String,
    pub name: String,
    pub ssh: SshSettings,
    /// The pinned host key (one OpenSSH public key line).
    pub host_key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote: Option<RemoteRecord>,
    /// The TLS client files by name, with `--include-secrets`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tls_client: Vec<(String, String)>,
}

/// Why a bundle could not be written or used.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error(
        "machine {0} is not an ssh machine: only ssh machines are exported (a VM's disk is not)"
    )]
    NotSsh(String),
    #[error("machine {name} has no pinned host key ({path}); start it once to pin it")]
    NoPin { name: String, path: PathBuf },
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not an rmachine machine bundle: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("{path} has bundle version {found}; this rmachine reads up to {BUNDLE_VERSION} (upgrade rmachine)")]
    FutureVersion { path: PathBuf, found: u32 },
}

/// `path` as `~/…` when it is under `home`.
fn portable(path: &Path, home: Option<&Path>) -> PathBuf {
    match home.and_then(|h| path.strip_prefix(h).ok()) {
        Some(rest) => Path::new("~").join(rest),
        None => path.to_path_buf(),
    }
}

/// `~/…` made a path under `home`.
fn local(path: &Path, home: Option<&Path>) -> PathBuf {
    match (path.strip_prefix("~"), home) {
        (Ok(rest), Some(home)) => home.join(rest),
        _ => path.to_path_buf(),
    }
}

impl Bundle {
    /// The bundle of an ssh machine.
    pub fn of(
        name: &str,
        ssh: Option<&SshSettings>,
        files: &MachinePaths,
        include_secrets: bool,
        home: Option<&Path>,
    ) -> Result<Bundle, BundleError> {
        let ssh = ssh.ok_or_else(|| BundleError::NotSsh(name.to_string()))?;
        let pin = files.ssh_host_key();
        let host_key = std::fs::read_to_string(&pin)
            .map_err(|_| BundleError::NoPin {
                name: name.to_string(),
                path: pin.clone(),
            })?
            .trim()
            .to_string();
        let mut ssh = ssh.clone();
        ssh.key = ssh.key.as_deref().map(|k| portable(k, home));
        let mut tls_client = Vec::new();
        if include_secrets {
            for file in CLIENT_FILES {
                let path = files.engine_certs().join(file);
                match std::fs::read_to_string(&path) {
                    Ok(text) => tls_client.push((file.to_string(), text)),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(source) => return Err(BundleError::Read { path, source }),
                }
            }
        }
        Ok(Bundle {
            version: BUNDLE_VERSION,
            kind: BUNDLE_KIND.into(),
            name: name.to_string(),
            ssh,
            host_key,
            remote: RemoteRecord::read(&files.remote_record()),
            tls_client,
        })
    }

    /// Parses a bundle file's text.
    pub fn parse(path: &Path, text: &str) -> Result<Bundle, BundleError> {
        let invalid = |message: String| BundleError::Invalid {
            path: path.to_path_buf(),
            message,
        };
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| invalid(e.to_string()))?;
        if value.get("kind").and_then(|k| k.as_str()) != Some(BUNDLE_KIND) {
            return Err(invalid(format!("its kind is not {BUNDLE_KIND:?}")));
        }
        match value.get("version").and_then(|v| v.as_u64()) {
            Some(v) if v == u64::from(BUNDLE_VERSION) => {}
            Some(v) if v > u64::from(BUNDLE_VERSION) => {
                return Err(BundleError::FutureVersion {
                    path: path.to_path_buf(),
                    found: u32::try_from(v).unwrap_or(u32::MAX),
                })
            }
            _ => return Err(invalid("missing or unknown `version`".into())),
        }
        let bundle: Bundle = serde_json::from_value(value).map_err(|e| invalid(e.to_string()))?;
        russh::keys::ssh_key::PublicKey::from_openssh(&bundle.host_key)
            .map_err(|e| invalid(format!("host_key is not an OpenSSH public key ({e})")))?;
        for (file, _) in &bundle.tls_client {
            if !CLIENT_FILES.contains(&file.as_str()) {
                return Err(invalid(format!("unexpected TLS file {file:?}")));
            }
        }
        Ok(bundle)
    }

    /// The settings with paths made local.
    pub fn local_settings(&self, home: Option<&Path>) -> SshSettings {
        let mut ssh = self.ssh.clone();
        ssh.key = ssh.key.as_deref().map(|k| local(k, home));
        ssh
    }

    /// The settings with paths made local to this computer's home folder.
    pub fn settings_here(&self) -> SshSettings {
        self.local_settings(dirs::home_dir().as_deref())
    }

    /// Writes the pin, the record and the TLS client files into a new machine's folder.
    pub fn install(&self, files: &MachinePaths) -> std::io::Result<()> {
        crate::store::write_atomic(
            &files.ssh_host_key(),
            format!("{}\n", self.host_key).as_bytes(),
        )?;
        if let Some(record) = &self.remote {
            let bytes = serde_json::to_vec_pretty(record).expect("the record serializes");
            crate::store::write_atomic(&files.remote_record(), &bytes)?;
        }
        if !self.tls_client.is_empty() {
            let dir = files.engine_certs();
            std::fs::create_dir_all(&dir)?;
            crate::sys::fs::set_private_dir(&dir)?;
            for (file, text) in &self.tls_client {
                crate::store::write_atomic(&dir.join(file), text.as_bytes())?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ssh::InstallMode;

    const PIN: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAaj7h6+h27EoPTjkmcdaeujpbVd/r9ur8blqh+fvzLd h";

    fn machine_dir(dir: &Path) -> MachinePaths {
        let paths = crate::paths::Paths::with_roots(dir.join("home"), dir.join("cache"));
        let files = paths.machine("far");
        std::fs::create_dir_all(files.dir()).unwrap();
        files
    }

    fn settings() -> SshSettings {
        SshSettings {
            host: "box".into(),
            user: "me".into(),
            port: Some(2222),
            key: Some("/home/me/.ssh/id_work".into()),
            install: InstallMode::Never,
            engine_tls: true,
        }
    }

    #[test]
    fn test_export_import_round_trip_makes_paths_local_and_keeps_the_ca_key_home() {
        let dir = tempfile::tempdir().unwrap();
        let files = machine_dir(dir.path());
        std::fs::write(files.ssh_host_key(), format!("{PIN}\n")).unwrap();
        std::fs::create_dir_all(files.engine_certs()).unwrap();
        std::fs::create_dir_all(files.engine_ca()).unwrap();
        for f in CLIENT_FILES {
            std::fs::write(files.engine_certs().join(f), format!("{f} text")).unwrap();
        }
        std::fs::write(files.engine_ca().join("ca-key.pem"), "CA SECRET").unwrap();

        let home = Path::new("/home/me");
        let without = Bundle::of("far", Some(&settings()), &files, false, Some(home)).unwrap();
        assert!(without.tls_client.is_empty());
        assert_eq!(
            without.ssh.key.as_deref(),
            Some(Path::new("~/.ssh/id_work"))
        );
        let with = Bundle::of("far", Some(&settings()), &files, true, Some(home)).unwrap();
        let text = serde_json::to_string(&with).unwrap();
        assert!(!text.contains("CA SECRET"), "the CA key never leaves");
        assert!(text.contains("key.pem text"));

        let back = Bundle::parse(Path::new("b.json"), &text).unwrap();
        let other_home = Path::new("/Users/me");
        assert_eq!(
            back.local_settings(Some(other_home)).key.as_deref(),
            Some(Path::new("/Users/me/.ssh/id_work"))
        );
        let dir2 = tempfile::tempdir().unwrap();
        let files2 = machine_dir(dir2.path());
        back.install(&files2).unwrap();
        assert_eq!(
            crate::ssh::host_key::read_pin(&files2.ssh_host_key())
                .unwrap()
                .unwrap()
                .to_openssh()
                .unwrap()
                .split(' ')
                .nth(1),
            PIN.split(' ').nth(1)
        );
        assert_eq!(
            std::fs::read_to_string(files2.engine_certs().join("key.pem")).unwrap(),
            "key.pem text"
        );
        assert!(!files2.engine_ca().exists());
    }

    #[test]
    fn test_bad_bundles_are_refused_with_the_reason() {
        let p = Path::new("x.json");
        for (text, want) in [
            ("not json", "not an rmachine machine bundle"),
            ("{\"kind\": \"other\", \"version\": 1}", "kind"),
            (&format!("{{\"kind\": \"{BUNDLE_KIND}\"}}"), "version"),
            (&format!("{{\"kind\": \"{BUNDLE_KIND}\", \"version\": 7}}"), "upgrade"),
            (
                &format!("{{\"kind\": \"{BUNDLE_KIND}\", \"version\": 1, \"name\": \"x\", \"ssh\": {{\"host\": \"h\", \"user\": \"u\"}}, \"host_key\": \"garbage\"}}"),
                "host_key",
            ),
        ] {
            let err = Bundle::parse(p, text).unwrap_err().to_string();
            assert!(err.contains(want), "{text}: {err}");
        }
        let dir = tempfile::tempdir().unwrap();
        let files = machine_dir(dir.path());
        assert!(matches!(
            Bundle::of("far", None, &files, false, None),
            Err(BundleError::NotSsh(_))
        ));
        assert!(matches!(
            Bundle::of("far", Some(&settings()), &files, false, None),
            Err(BundleError::NoPin { .. })
        ));
    }
}
