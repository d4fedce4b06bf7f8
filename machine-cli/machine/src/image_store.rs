//! The installed guest images (`images/<version>/`): listing, removal, and the image a
//! machine boots (the newest of the machine's architecture, or the version it names),
//! verified against its manifest's architecture, checksums and protocol at every start
//! (a file is hashed again only when it changed since its checksum last matched).
//! The image builder (`guest/image`) writes these folders; this module only reads them.

use std::path::{Path, PathBuf};

pub use rmachine_protocol::image::{files, Arch, Artifact, Manifest, ManifestError};
use sha2::{Digest, Sha256};

use crate::paths::Paths;

/// Why an image could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ImageStoreError {
    #[error("image {0} not found")]
    NotFound(String),
    #[error("no {0} guest image is installed: run `rmachine image build --arch {0}`")]
    NoneInstalled(Arch),
    #[error("image {version} is an {image} image; this machine runs {machine} guests (leave the image setting unset for the newest {machine} image)")]
    WrongArch {
        version: String,
        image: Arch,
        machine: Arch,
    },
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Manifest(#[from] ManifestError),
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ImageStoreError {
    let path = path.to_path_buf();
    move |source| ImageStoreError::Io { what, path, source }
}

/// Every installed image, newest build first.
pub fn list(paths: &Paths) -> Result<Vec<(Manifest, std::time::SystemTime)>, ImageStoreError> {
    let dir = paths.images_dir();
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io("cannot list", &dir)(e)),
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "partial") {
            continue;
        }
        if let Ok(m) = Manifest::read(&path) {
            let built = std::fs::metadata(path.join(files::MANIFEST))
                .and_then(|m| m.modified())
                .unwrap_or(std::time::SystemTime::UNIX_EPOCH);
            out.push((m, built));
        }
    }
    out.sort_by_key(|entry| std::cmp::Reverse(entry.1));
    Ok(out)
}

/// Removes an installed image (the build caches stay).
pub fn remove(paths: &Paths, version: &str) -> Result<(), ImageStoreError> {
    if version.is_empty() || version.contains(['/', '\\']) || version.starts_with('.') {
        return Err(ImageStoreError::NotFound(version.to_string()));
    }
    let dir = paths.image_dir(version);
    if !dir.join(files::MANIFEST).exists() {
        return Err(ImageStoreError::NotFound(version.to_string()));
    }
    std::fs::remove_dir_all(&dir).map_err(io("cannot remove", &dir))
}

/// The image a machine of architecture `arch` boots: `version` (which must be of that
/// architecture), or the newest installed of that architecture; checksums verified.
pub fn resolve(
    paths: &Paths,
    version: Option<&str>,
    arch: Arch,
) -> Result<(Manifest, PathBuf), ImageStoreError> {
    let version = match version {
        Some(v) => v.to_string(),
        None => list(paths)?
            .into_iter()
            .find(|(m, _)| m.arch == arch)
            .map(|(m, _)| m.version)
            .ok_or(ImageStoreError::NoneInstalled(arch))?,
    };
    let dir = paths.image_dir(&version);
    let manifest = Manifest::read(&dir).map_err(|_| ImageStoreError::NotFound(version.clone()))?;
    if manifest.arch != arch {
        return Err(ImageStoreError::WrongArch {
            version,
            image: manifest.arch,
            machine: arch,
        });
    }
    verify_unless_unchanged(&manifest, &dir, &paths.cache().join(VERIFIED_DIR))?;
    Ok((manifest, dir))
}

/// Where [`verify_unless_unchanged`] remembers the files it checked, under the cache.
const VERIFIED_DIR: &str = "verified-images";

/// What an image file looked like when its checksum last matched.
#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct Checked {
    file: String,
    sha256: String,
    len: u64,
    modified_ns: u128,
}

impl Checked {
    fn of(artifact: &Artifact, dir: &Path) -> Option<Checked> {
        let meta = std::fs::metadata(dir.join(&artifact.file)).ok()?;
        let modified = meta.modified().ok()?.duration_since(std::time::UNIX_EPOCH);
        Some(Checked {
            file: artifact.file.clone(),
            sha256: artifact.sha256.clone(),
            len: meta.len(),
            modified_ns: modified.ok()?.as_nanos(),
        })
    }
}

/// [`verify`], skipping the hashing when every file has the size and modification time
/// it had when its checksum last matched (recorded in `seen_dir`): hashing a 240 MiB root
/// filesystem costs about a second of every start. What this trusts is the file system's
/// metadata: a change of content through the usual ways (a rebuild, a copy, a truncated
/// download, a write) changes the size or the time. A record that cannot be read or
/// written only means hashing again.
pub fn verify_unless_unchanged(
    manifest: &Manifest,
    dir: &Path,
    seen_dir: &Path,
) -> Result<(), ImageStoreError> {
    manifest.check_protocol()?;
    let record = seen_dir.join(format!("{}.json", manifest.version));
    let now: Option<Vec<Checked>> = manifest
        .artifacts()
        .into_iter()
        .map(|a| Checked::of(a, dir))
        .collect();
    let before = std::fs::read(&record)
        .ok()
        .and_then(|bytes| serde_json::from_slice::<Vec<Checked>>(&bytes).ok());
    if now.is_some() && before == now {
        return Ok(());
    }
    verify(manifest, dir)?;
    if let Some(now) = now {
        let written = std::fs::create_dir_all(seen_dir).and_then(|()| {
            crate::store::write_atomic(&record, &serde_json::to_vec(&now).unwrap_or_default())
        });
        if let Err(e) = written {
            tracing::debug!(error = %e, path = %record.display(), "cannot record the verified image");
        }
    }
    Ok(())
}

/// Checks the image's protocol version and each file's sha256.
pub fn verify(manifest: &Manifest, dir: &Path) -> Result<(), ImageStoreError> {
    manifest.check_protocol()?;
    for artifact in manifest.artifacts() {
        let actual = sha256_file(&dir.join(&artifact.file))?;
        if actual != artifact.sha256 {
            return Err(ManifestError::Checksum {
                version: manifest.version.clone(),
                file: artifact.file.clone(),
                expected: artifact.sha256.clone(),
                actual,
            }
            .into());
        }
    }
    Ok(())
}

/// sha256 of a file, hex.
pub fn sha256_file(path: &Path) -> Result<String, ImageStoreError> {
    let mut f = std::fs::File::open(path).map_err(io("cannot open", path))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).map_err(io("cannot read", path))?;
    Ok(hex::encode(h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_image(paths: &Paths, version: &str) -> Manifest {
        fake_image_of(paths, version, Arch::Amd64)
    }

    fn fake_image_of(paths: &Paths, version: &str, arch: Arch) -> Manifest {
        let dir = paths.image_dir(version);
        std::fs::create_dir_all(&dir).unwrap();
        let describe = |file: &str, bytes: &[u8]| {
            std::fs::write(dir.join(file), bytes).unwrap();
            Artifact {
                file: file.into(),
                sha256: sha256_file(&dir.join(file)).unwrap(),
                size_bytes: bytes.len() as u64,
            }
        };
        let m = Manifest {
            version: version.into(),
            arch,
            protocol: rmachine_protocol::PROTOCOL_VERSION,
            kernel: describe(files::kernel(arch), b"kernel"),
            rootfs: describe(files::ROOTFS, b"rootfs"),
            kernel_source: "linux-source-6.12 6.12.1-1".into(),
            kernel_config_sha256: "c".into(),
            agent_sha256: "a".into(),
            kernel_cmdline: rmachine_protocol::image::kernel_cmdline(arch).into(),
        };
        m.write(&dir).unwrap();
        m
    }

    #[test]
    fn test_list_and_remove_on_empty_home() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::with_roots(dir.path().join("h"), dir.path().join("c"));
        assert!(list(&paths).unwrap().is_empty());
        assert!(matches!(
            remove(&paths, "nope"),
            Err(ImageStoreError::NotFound(_))
        ));
        assert!(matches!(
            remove(&paths, "../etc"),
            Err(ImageStoreError::NotFound(_))
        ));
        let err = resolve(&paths, None, Arch::Arm64).unwrap_err();
        assert!(matches!(err, ImageStoreError::NoneInstalled(Arch::Arm64)));
        assert!(
            err.to_string()
                .contains("rmachine image build --arch arm64"),
            "{err}"
        );
    }

    #[test]
    fn test_resolve_verifies_checksums_and_protocol() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::with_roots(dir.path().join("h"), dir.path().join("c"));
        let mut m = fake_image(&paths, "0.1.0-abc");
        let (found, found_dir) = resolve(&paths, None, Arch::Amd64).unwrap();
        assert_eq!(found, m);
        assert_eq!(found_dir, paths.image_dir("0.1.0-abc"));
        assert_eq!(list(&paths).unwrap().len(), 1);

        std::fs::write(found_dir.join(files::ROOTFS), b"tampered").unwrap();
        let err = resolve(&paths, Some("0.1.0-abc"), Arch::Amd64)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("rootfs.erofs") && err.contains("damaged"),
            "{err}"
        );

        m.protocol += 1;
        let err = verify(&m, &found_dir).unwrap_err().to_string();
        assert!(err.contains("protocol"), "{err}");

        remove(&paths, "0.1.0-abc").unwrap();
        assert!(list(&paths).unwrap().is_empty());
    }

    #[test]
    fn test_a_checked_image_is_hashed_again_only_when_it_changed() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::with_roots(dir.path().join("h"), dir.path().join("c"));
        let m = fake_image(&paths, "0.1.0-abc");
        let image = paths.image_dir("0.1.0-abc");
        let seen = dir.path().join("seen");
        verify_unless_unchanged(&m, &image, &seen).unwrap();
        let record = seen.join("0.1.0-abc.json");
        assert!(record.exists(), "the match is recorded");

        // Same size, new content: the new modification time makes it hashed again.
        let rootfs = image.join(files::ROOTFS);
        std::fs::write(&rootfs, b"ROOTFS").unwrap();
        let file = std::fs::File::options().write(true).open(&rootfs).unwrap();
        file.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(7))
            .unwrap();
        let err = verify_unless_unchanged(&m, &image, &seen).unwrap_err();
        assert!(err.to_string().contains("rootfs.erofs"), "{err}");

        // Restored: checked again, and a garbage record is only a reason to hash.
        std::fs::write(&rootfs, b"rootfs").unwrap();
        std::fs::write(&record, b"\x00 not json").unwrap();
        verify_unless_unchanged(&m, &image, &seen).unwrap();
        let recorded: Vec<Checked> =
            serde_json::from_slice(&std::fs::read(&record).unwrap()).unwrap();
        assert_eq!(recorded.len(), 2);

        // A missing file is never taken as unchanged.
        std::fs::remove_file(&rootfs).unwrap();
        assert!(verify_unless_unchanged(&m, &image, &seen).is_err());
    }

    #[test]
    fn test_resolve_takes_the_newest_image_of_the_arch() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::with_roots(dir.path().join("h"), dir.path().join("c"));
        let old_amd64 = fake_image_of(&paths, "0.1.0-amd64-old", Arch::Amd64);
        let arm64 = fake_image_of(&paths, "0.1.0-arm64-new", Arch::Arm64);
        // The arm64 image is the newest of all; each arch still gets its own.
        let age = |version: &str, secs: u64| {
            let file = std::fs::File::options()
                .write(true)
                .open(paths.image_dir(version).join(files::MANIFEST))
                .unwrap();
            file.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
                .unwrap();
        };
        age("0.1.0-amd64-old", 1_000);
        age("0.1.0-arm64-new", 2_000);
        assert_eq!(list(&paths).unwrap()[0].0.version, "0.1.0-arm64-new");
        assert_eq!(resolve(&paths, None, Arch::Amd64).unwrap().0, old_amd64);
        let (found, found_dir) = resolve(&paths, None, Arch::Arm64).unwrap();
        assert_eq!(found, arm64);
        assert!(found_dir.join("Image").is_file());
        // A named image of another architecture is refused, saying both.
        let err = resolve(&paths, Some("0.1.0-arm64-new"), Arch::Amd64)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("0.1.0-arm64-new")
                && err.contains("arm64 image")
                && err.contains("amd64 guests"),
            "{err}"
        );
        // A manifest written before the arch field is an amd64 image.
        let legacy = paths.image_dir("0.1.0-amd64-old").join(files::MANIFEST);
        let mut value: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&legacy).unwrap()).unwrap();
        value.as_object_mut().unwrap().remove("arch");
        std::fs::write(&legacy, value.to_string()).unwrap();
        assert_eq!(
            resolve(&paths, None, Arch::Amd64).unwrap().0.version,
            "0.1.0-amd64-old"
        );
    }
}
