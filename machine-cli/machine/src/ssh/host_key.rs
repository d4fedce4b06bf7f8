//! Host key pinning: the first connection shows the host's key (its SHA256 fingerprint)
//! and pins it in the machine's folder (`ssh_host_key`, one OpenSSH public key line);
//! every later connection must be offered exactly that key.

use std::path::Path;

use russh::keys::ssh_key::{HashAlg, PublicKey};

use super::SshError;

/// What a connection accepts as the host's key.
#[derive(Debug, Clone)]
pub enum HostKeyCheck {
    /// Exactly this key (the machine's pin).
    Pinned(PublicKey),
    /// First use, with a fingerprint the user gave (`--ssh-host-key SHA256:…`).
    Fingerprint(String),
    /// First use: any key, shown and pinned by the caller.
    FirstUse,
}

impl HostKeyCheck {
    /// Whether `offered` passes.
    pub fn accepts(&self, offered: &PublicKey) -> bool {
        match self {
            HostKeyCheck::Pinned(pinned) => pinned.key_data() == offered.key_data(),
            HostKeyCheck::Fingerprint(want) => fingerprint(offered) == normalize_fingerprint(want),
            HostKeyCheck::FirstUse => true,
        }
    }
}

/// `SHA256:<base64>`, as `ssh-keygen -lf` prints it.
pub fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

/// A fingerprint as a user may type it (with or without `SHA256:`; base64 padding as
/// OpenSSH prints none).
pub fn normalize_fingerprint(text: &str) -> String {
    let t = text.trim();
    let body = t.strip_prefix("SHA256:").unwrap_or(t).trim_end_matches('=');
    format!("SHA256:{body}")
}

/// Checks a `--ssh-host-key` value: `SHA256:` and 43 base64 characters.
pub fn parse_fingerprint(text: &str) -> Result<String, String> {
    let f = normalize_fingerprint(text);
    let body = &f["SHA256:".len()..];
    let ok = body.len() == 43
        && body
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '+' || c == '/');
    if ok {
        Ok(f)
    } else {
        Err(format!(
            "{text:?} is not a SHA256 host key fingerprint (as `ssh-keygen -lf` prints: SHA256: and 43 characters)"
        ))
    }
}

/// Reads a machine's pin; `None` when there is none yet.
pub fn read_pin(path: &Path) -> Result<Option<PublicKey>, SshError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(SshError::PinFile {
                path: path.to_path_buf(),
                message: source.to_string(),
            })
        }
    };
    PublicKey::from_openssh(text.trim())
        .map(Some)
        .map_err(|e| SshError::PinFile {
            path: path.to_path_buf(),
            message: format!("not an OpenSSH public key ({e})"),
        })
}

/// Writes a machine's pin (its owner's alone).
pub fn write_pin(path: &Path, key: &PublicKey, host: &str) -> Result<(), SshError> {
    let mut key = key.clone();
    key.set_comment(host);
    let line = key.to_openssh().map_err(|e| SshError::PinFile {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    crate::store::write_atomic(path, format!("{line}\n").as_bytes()).map_err(|e| {
        SshError::PinFile {
            path: path.to_path_buf(),
            message: e.to_string(),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAaj7h6+h27EoPTjkmcdaeujpbVd/r9ur8blqh+fvzLd test";
    const OTHER: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFZzVFRL7+MM9LAPybq0CvPGD836jYmhyVMtDj6ZDojy other";

    #[test]
    fn test_pin_accepts_only_its_key() {
        let key = PublicKey::from_openssh(ED).unwrap();
        let other = PublicKey::from_openssh(OTHER).unwrap();
        let pinned = HostKeyCheck::Pinned(key.clone());
        assert!(pinned.accepts(&key));
        assert!(!pinned.accepts(&other));
        let f = fingerprint(&key);
        assert!(f.starts_with("SHA256:") && f.len() == 50, "{f}");
        assert!(HostKeyCheck::Fingerprint(f.clone()).accepts(&key));
        assert!(HostKeyCheck::Fingerprint(f[7..].to_string()).accepts(&key));
        assert!(!HostKeyCheck::Fingerprint(f).accepts(&other));
        assert!(HostKeyCheck::FirstUse.accepts(&other));
    }

    #[test]
    fn test_fingerprint_flag_is_checked() {
        let f = fingerprint(&PublicKey::from_openssh(ED).unwrap());
        assert_eq!(parse_fingerprint(&f).unwrap(), f);
        assert_eq!(parse_fingerprint(&format!("{}=", &f[7..])).unwrap(), f);
        assert!(parse_fingerprint("SHA256:short").is_err());
        assert!(parse_fingerprint("MD5:aa:bb").is_err());
    }

    #[test]
    fn test_pin_file_round_trip_and_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ssh_host_key");
        assert!(read_pin(&path).unwrap().is_none());
        let key = PublicKey::from_openssh(ED).unwrap();
        write_pin(&path, &key, "h").unwrap();
        assert_eq!(read_pin(&path).unwrap().unwrap().key_data(), key.key_data());
        std::fs::write(&path, "garbage\0").unwrap();
        let err = read_pin(&path).unwrap_err().to_string();
        assert!(err.contains("ssh_host_key"), "{err}");
    }
}
