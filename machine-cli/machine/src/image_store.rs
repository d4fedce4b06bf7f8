//! The installed guest images: the user's (`images/<version>/` under `RMACHINE_HOME`,
//! written by the image builder) and the system's (`<system>/images/<version>/`, installed
//! with rmachine, e.g. by the .deb; read-only: nothing here writes there). Listing,
//! removal (user images only), and the image a machine boots: the version it names, or
//! the newest usable one of its architecture, the user's before the system's; verified
//! against its manifest's architecture, checksums and protocol at every start (a file is
//! hashed again only when it changed since its checksum last matched).

use std::path::{Path, PathBuf};
use std::time::SystemTime;

pub use rmachine_protocol::image::{files, Arch, Artifact, Manifest, ManifestError};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::paths::Paths;

/// Where an installed image comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// The user's own (`rmachine image build`), under `RMACHINE_HOME/images`.
    User,
    /// Installed with rmachine (a package), read-only.
    System,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::User => "user",
            Source::System => "system",
        }
    }

    /// What to do about an unusable image of this source.
    fn advice(self) -> &'static str {
        match self {
            Source::User => "rebuild it with `rmachine image build`",
            Source::System => {
                "it came with rmachine: reinstall the package that installed it, of this rmachine's version"
            }
        }
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// One installed image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Installed {
    #[serde(flatten)]
    pub manifest: Manifest,
    pub source: Source,
    /// The image's folder.
    pub dir: PathBuf,
    /// When its manifest was written (the newest image is the one booted by default).
    #[serde(skip)]
    pub built: SystemTime,
}

impl Installed {
    /// Whether this rmachine speaks the image's agent protocol (the image can boot).
    pub fn usable(&self) -> bool {
        self.manifest.protocol == rmachine_protocol::PROTOCOL_VERSION
    }
}

/// The installed images, and the image folders that could not be read.
#[derive(Debug, Default)]
pub struct Listing {
    /// The user's images (newest first), then the system's (newest first).
    pub images: Vec<Installed>,
    /// Folders that are not usable images, each naming its problem.
    pub broken: Vec<ImageStoreError>,
}

/// Why an image could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ImageStoreError {
    #[error("image {0} not found")]
    NotFound(String),
    #[error("image {version} is not installed (installed {arch} images: {installed}); to boot the newest instead, unset the machine's image setting: `rmachine config set -m NAME image newest`")]
    NotInstalled {
        version: String,
        arch: Arch,
        installed: String,
    },
    #[error("no {0} guest image is installed: run `rmachine image build --arch {0}`, pull one (`rmachine image pull REF`, or `rmachine config set --defaults image-source REF` for starts to pull it), or install an rmachine package that carries one")]
    NoneInstalled(Arch),
    #[error("image {version} is an {image} image; this machine runs {machine} guests (leave the image setting unset for the newest {machine} image)")]
    WrongArch {
        version: String,
        image: Arch,
        machine: Arch,
    },
    #[error("{source_kind} image {version} ({dir}) cannot be used ({advice})")]
    Unusable {
        source_kind: Source,
        version: String,
        dir: PathBuf,
        advice: &'static str,
        #[source]
        source: Box<ImageStoreError>,
    },
    #[error("{source_kind} image folder {dir} is not a usable image ({advice})")]
    Broken {
        source_kind: Source,
        dir: PathBuf,
        advice: &'static str,
        #[source]
        source: Box<ManifestError>,
    },
    #[error("{source_kind} image folder {dir} holds image {found}: a folder must be named after its manifest's version")]
    Misnamed {
        source_kind: Source,
        dir: PathBuf,
        found: String,
    },
    #[error("image {version} is a system image ({dir}, installed with rmachine): uninstalling the package removes it, `rmachine image rm` does not")]
    SystemImage { version: String, dir: PathBuf },
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

pub(crate) fn io(
    what: &'static str,
    path: &Path,
) -> impl FnOnce(std::io::Error) -> ImageStoreError {
    let path = path.to_path_buf();
    move |source| ImageStoreError::Io { what, path, source }
}

/// The image folders to look in, in order: the user's, then the system's.
fn roots(paths: &Paths) -> Vec<(Source, PathBuf)> {
    let mut roots = vec![(Source::User, paths.images_dir())];
    if let Some(system) = paths.system_images_dir() {
        roots.push((Source::System, system));
    }
    roots
}

/// Every installed image: the user's (newest build first), then the system's (newest
/// first); folders that are not usable images are in [`Listing::broken`]. Only an
/// unreadable user image folder is an error (a broken system folder must not stop the
/// user's own images).
pub fn list(paths: &Paths) -> Result<Listing, ImageStoreError> {
    let mut listing = Listing::default();
    for (source, root) in roots(paths) {
        let entries = match std::fs::read_dir(&root) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) if source == Source::System => {
                listing
                    .broken
                    .push(io("cannot list the system images in", &root)(e));
                continue;
            }
            Err(e) => return Err(io("cannot list", &root)(e)),
        };
        let mut found = Vec::new();
        for entry in entries.flatten() {
            let dir = entry.path();
            // An image the builder is still writing.
            if dir.extension().is_some_and(|e| e == "partial") || !dir.is_dir() {
                continue;
            }
            match read_image(source, &dir) {
                Ok(image) => found.push(image),
                Err(e) => listing.broken.push(e),
            }
        }
        found.sort_by_key(|image| std::cmp::Reverse(image.built));
        listing.images.extend(found);
    }
    Ok(listing)
}

/// Reads the manifest of the image folder `dir` (not its files' checksums).
fn read_image(source: Source, dir: &Path) -> Result<Installed, ImageStoreError> {
    let manifest = Manifest::read(dir).map_err(|e| ImageStoreError::Broken {
        source_kind: source,
        dir: dir.to_path_buf(),
        advice: source.advice(),
        source: Box::new(e),
    })?;
    if dir.file_name() != Some(std::ffi::OsStr::new(&manifest.version)) {
        return Err(ImageStoreError::Misnamed {
            source_kind: source,
            dir: dir.to_path_buf(),
            found: manifest.version,
        });
    }
    let built = std::fs::metadata(dir.join(files::MANIFEST))
        .and_then(|m| m.modified())
        .unwrap_or(SystemTime::UNIX_EPOCH);
    Ok(Installed {
        manifest,
        source,
        dir: dir.to_path_buf(),
        built,
    })
}

/// A version as a folder name: one path component, not hidden.
pub(crate) fn valid_version(version: &str) -> bool {
    !version.is_empty() && !version.contains(['/', '\\']) && !version.starts_with('.')
}

/// Removes one of the user's images (the build caches stay). System images are the
/// package's: refused, naming their folder.
pub fn remove(paths: &Paths, version: &str) -> Result<(), ImageStoreError> {
    if !valid_version(version) {
        return Err(ImageStoreError::NotFound(version.to_string()));
    }
    let dir = paths.image_dir(version);
    if dir.join(files::MANIFEST).exists() {
        return std::fs::remove_dir_all(&dir).map_err(io("cannot remove", &dir));
    }
    if let Some(system) = paths.system_images_dir() {
        let dir = system.join(version);
        if dir.join(files::MANIFEST).exists() {
            return Err(ImageStoreError::SystemImage {
                version: version.to_string(),
                dir,
            });
        }
    }
    Err(ImageStoreError::NotFound(version.to_string()))
}

/// The image a machine of architecture `arch` boots: `version` (the user's folder of
/// that name, else the system's; it must be of that architecture), or the newest usable
/// image of that architecture (the user's before the system's; an image of another
/// agent protocol is passed over); checksums and protocol verified.
pub fn resolve(
    paths: &Paths,
    version: Option<&str>,
    arch: Arch,
) -> Result<(Manifest, PathBuf), ImageStoreError> {
    let image = match version {
        Some(version) => find(paths, version, arch)?,
        None => newest(paths, arch)?,
    };
    if image.manifest.arch != arch {
        return Err(ImageStoreError::WrongArch {
            version: image.manifest.version,
            image: image.manifest.arch,
            machine: arch,
        });
    }
    let seen = paths.cache().join(VERIFIED_DIR);
    verify_unless_unchanged(&image.manifest, &image.dir, &seen).map_err(|e| {
        ImageStoreError::Unusable {
            source_kind: image.source,
            version: image.manifest.version.clone(),
            dir: image.dir.clone(),
            advice: image.source.advice(),
            source: Box::new(e),
        }
    })?;
    Ok((image.manifest, image.dir))
}

/// The image named `version`: the user's, else the system's.
fn find(paths: &Paths, version: &str, arch: Arch) -> Result<Installed, ImageStoreError> {
    if valid_version(version) {
        for (source, root) in roots(paths) {
            let dir = root.join(version);
            if dir.join(files::MANIFEST).exists() {
                return read_image(source, &dir);
            }
        }
    }
    let listing = list(paths)?;
    let mut installed: Vec<String> = (listing.images.iter())
        .filter(|i| i.manifest.arch == arch)
        .map(|i| format!("{} ({})", i.manifest.version, i.source))
        .collect();
    if installed.is_empty() {
        installed.push("none".into());
    }
    Err(ImageStoreError::NotInstalled {
        version: version.to_string(),
        arch,
        installed: installed.join(", "),
    })
}

/// The newest usable image of `arch`, the user's first. With none usable: the newest of
/// another protocol is refused saying so, else a broken image folder is named, else
/// there is none.
fn newest(paths: &Paths, arch: Arch) -> Result<Installed, ImageStoreError> {
    let Listing { images, broken } = list(paths)?;
    let mut of_arch = images.into_iter().filter(|i| i.manifest.arch == arch);
    let first = of_arch.next();
    if let Some(image) = first.iter().cloned().chain(of_arch).find(Installed::usable) {
        return Ok(image);
    }
    match (first, broken.into_iter().next()) {
        // Refused by verify with the protocol named.
        (Some(image), _) => Ok(image),
        (None, Some(broken)) => Err(broken),
        (None, None) => Err(ImageStoreError::NoneInstalled(arch)),
    }
}

/// Where [`verify_unless_unchanged`] remembers the files it checked, under the cache.
const VERIFIED_DIR: &str = "verified-images";

/// What an image file looked like when its checksum last matched.
#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct Checked {
    /// The file's path (its folder tells a user's image from a system one).
    file: String,
    sha256: String,
    len: u64,
    modified_ns: u128,
}

impl Checked {
    fn of(artifact: &Artifact, dir: &Path) -> Option<Checked> {
        // The file itself, whatever links lead to it: homes that link one images folder
        // (the test environments do) share one record instead of overwriting each other's.
        let path = std::fs::canonicalize(dir.join(&artifact.file)).ok()?;
        let meta = std::fs::metadata(&path).ok()?;
        let modified = meta.modified().ok()?.duration_since(std::time::UNIX_EPOCH);
        Some(Checked {
            file: path.display().to_string(),
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
    // A user's and a system image of one version share the record: the files' folder is
    // part of what must match.
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
        write_record(&record, seen_dir, &now);
    }
    Ok(())
}

/// Records the files of an image whose checksums were just checked another way (a pull
/// checks every file's sha256 as it streams), so the next start does not hash them again.
pub(crate) fn record_verified(manifest: &Manifest, dir: &Path, paths: &Paths) {
    let seen_dir = paths.cache().join(VERIFIED_DIR);
    let now: Option<Vec<Checked>> = manifest
        .artifacts()
        .into_iter()
        .map(|a| Checked::of(a, dir))
        .collect();
    if let Some(now) = now {
        let record = seen_dir.join(format!("{}.json", manifest.version));
        write_record(&record, &seen_dir, &now);
    }
}

/// Writes a record of checked files; a failure only means hashing again next time.
fn write_record(record: &Path, seen_dir: &Path, checked: &[Checked]) {
    let written = std::fs::create_dir_all(seen_dir).and_then(|()| {
        crate::store::write_atomic(record, &serde_json::to_vec(checked).unwrap_or_default())
    });
    if let Err(e) = written {
        tracing::debug!(error = %e, path = %record.display(), "cannot record the verified image");
    }
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
        fake_image_in(&paths.images_dir(), version, arch)
    }

    /// An image folder `root/version` whose files are a few bytes.
    fn fake_image_in(root: &Path, version: &str, arch: Arch) -> Manifest {
        let dir = root.join(version);
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

    /// Sets the build time of the image folder `dir` (its manifest's mtime).
    fn age(dir: &Path, secs: u64) {
        let file = std::fs::File::options()
            .write(true)
            .open(dir.join(files::MANIFEST))
            .unwrap();
        file.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
            .unwrap();
    }

    /// Roots in a temporary folder, with a system folder `<tmp>/system`.
    fn roots_with_system(dir: &Path) -> (Paths, PathBuf) {
        let system = dir.join("system");
        let paths = Paths::with_roots(dir.join("h"), dir.join("c")).with_system_dir(Some(system));
        let images = paths.system_images_dir().unwrap();
        (paths, images)
    }

    fn versions(listing: &Listing) -> Vec<(String, Source)> {
        (listing.images.iter())
            .map(|i| (i.manifest.version.clone(), i.source))
            .collect()
    }

    #[test]
    fn test_list_and_remove_on_empty_home() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::with_roots(dir.path().join("h"), dir.path().join("c"));
        let listing = list(&paths).unwrap();
        assert!(listing.images.is_empty() && listing.broken.is_empty());
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
        assert_eq!(list(&paths).unwrap().images.len(), 1);

        std::fs::write(found_dir.join(files::ROOTFS), b"tampered").unwrap();
        let err = resolve(&paths, Some("0.1.0-abc"), Arch::Amd64).unwrap_err();
        let chain = crate::lifecycle::error_chain(&err);
        assert!(
            chain.contains("rootfs.erofs")
                && chain.contains("damaged")
                && chain.contains("user image 0.1.0-abc")
                && chain.contains("rmachine image build"),
            "{chain}"
        );

        m.protocol += 1;
        let err = verify(&m, &found_dir).unwrap_err().to_string();
        assert!(err.contains("protocol"), "{err}");

        remove(&paths, "0.1.0-abc").unwrap();
        assert!(list(&paths).unwrap().images.is_empty());
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
        // Closed now: Windows (wine here) keeps an open file readable after its removal below.
        drop(file);
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

    /// Homes whose images folder is a link to one folder share the record: a check made
    /// through one link spares the others the hashing.
    #[cfg(unix)]
    #[test]
    fn test_linked_image_folders_share_one_record() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::with_roots(dir.path().join("h"), dir.path().join("c"));
        let m = fake_image(&paths, "0.1.0-abc");
        let image = paths.image_dir("0.1.0-abc");
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::os::unix::fs::symlink(&image, &a).unwrap();
        std::os::unix::fs::symlink(&image, &b).unwrap();
        let seen = dir.path().join("seen");
        verify_unless_unchanged(&m, &a, &seen).unwrap();
        let recorded = std::fs::read(seen.join("0.1.0-abc.json")).unwrap();
        // Content changed behind the metadata's back (same size, the old time put back):
        // taken from the record through the other link, so not hashed again.
        let rootfs = image.join(files::ROOTFS);
        let time = std::fs::metadata(&rootfs).unwrap().modified().unwrap();
        std::fs::write(&rootfs, b"ROOTFS").unwrap();
        let file = std::fs::File::options().write(true).open(&rootfs).unwrap();
        file.set_modified(time).unwrap();
        drop(file);
        verify_unless_unchanged(&m, &b, &seen).unwrap();
        assert_eq!(
            std::fs::read(seen.join("0.1.0-abc.json")).unwrap(),
            recorded
        );
    }

    #[test]
    fn test_resolve_takes_the_newest_image_of_the_arch() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::with_roots(dir.path().join("h"), dir.path().join("c"));
        let old_amd64 = fake_image_of(&paths, "0.1.0-amd64-old", Arch::Amd64);
        let arm64 = fake_image_of(&paths, "0.1.0-arm64-new", Arch::Arm64);
        // The arm64 image is the newest of all; each arch still gets its own.
        age(&paths.image_dir("0.1.0-amd64-old"), 1_000);
        age(&paths.image_dir("0.1.0-arm64-new"), 2_000);
        assert_eq!(
            list(&paths).unwrap().images[0].manifest.version,
            "0.1.0-arm64-new"
        );
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

    #[test]
    fn test_system_images_are_found_after_the_users() {
        let dir = tempfile::tempdir().unwrap();
        let (paths, system) = roots_with_system(dir.path());
        let packaged = fake_image_in(&system, "0.1.0-amd64-pkg", Arch::Amd64);
        // Only the system's: it boots, and says where it is.
        let (found, found_dir) = resolve(&paths, None, Arch::Amd64).unwrap();
        assert_eq!(found, packaged);
        assert_eq!(found_dir, system.join("0.1.0-amd64-pkg"));
        let listing = list(&paths).unwrap();
        assert_eq!(
            versions(&listing),
            [("0.1.0-amd64-pkg".to_string(), Source::System)]
        );
        let json = serde_json::to_value(&listing.images[0]).unwrap();
        assert_eq!(json["source"], "system");
        assert_eq!(json["version"], "0.1.0-amd64-pkg");
        assert_eq!(json["dir"], found_dir.to_str().unwrap());
        // The user's own image comes first, even when older than the system's.
        let built = fake_image(&paths, "0.1.0-amd64-mine");
        age(&paths.image_dir("0.1.0-amd64-mine"), 1_000);
        assert_eq!(resolve(&paths, None, Arch::Amd64).unwrap().0, built);
        assert_eq!(
            versions(&list(&paths).unwrap()),
            [
                ("0.1.0-amd64-mine".to_string(), Source::User),
                ("0.1.0-amd64-pkg".to_string(), Source::System)
            ]
        );
        // By name, either.
        assert_eq!(
            resolve(&paths, Some("0.1.0-amd64-pkg"), Arch::Amd64)
                .unwrap()
                .1,
            found_dir
        );
        // rm takes the user's, never the system's.
        let err = remove(&paths, "0.1.0-amd64-pkg").unwrap_err().to_string();
        assert!(
            err.contains("system image") && err.contains("uninstalling the package"),
            "{err}"
        );
        assert!(found_dir.join(files::MANIFEST).is_file());
        remove(&paths, "0.1.0-amd64-mine").unwrap();
        assert_eq!(resolve(&paths, None, Arch::Amd64).unwrap().0, packaged);
    }

    #[test]
    fn test_image_of_another_protocol_is_passed_over() {
        let dir = tempfile::tempdir().unwrap();
        let (paths, system) = roots_with_system(dir.path());
        let packaged = fake_image_in(&system, "0.2.0-amd64-pkg", Arch::Amd64);
        // An older user build, of a protocol this rmachine no longer speaks (an upgrade).
        let mut old = fake_image(&paths, "0.1.0-amd64-old");
        old.protocol = rmachine_protocol::PROTOCOL_VERSION + 1;
        old.write(&paths.image_dir("0.1.0-amd64-old")).unwrap();
        assert_eq!(resolve(&paths, None, Arch::Amd64).unwrap().0, packaged);
        let listing = list(&paths).unwrap();
        assert!(!listing.images[0].usable() && listing.images[1].usable());
        // Named, it is refused with the protocol and what to do.
        let err = resolve(&paths, Some("0.1.0-amd64-old"), Arch::Amd64).unwrap_err();
        let chain = crate::lifecycle::error_chain(&err);
        assert!(
            chain.contains("agent protocol") && chain.contains("rebuild it"),
            "{chain}"
        );
        // With no usable one left, the newest is refused the same way.
        std::fs::remove_dir_all(system.join("0.2.0-amd64-pkg")).unwrap();
        let chain = crate::lifecycle::error_chain(&resolve(&paths, None, Arch::Amd64).unwrap_err());
        assert!(chain.contains("agent protocol"), "{chain}");
    }

    #[test]
    fn test_a_missing_named_image_says_what_is_installed() {
        let dir = tempfile::tempdir().unwrap();
        let (paths, system) = roots_with_system(dir.path());
        fake_image_in(&system, "0.2.0-amd64-new", Arch::Amd64);
        let err = resolve(&paths, Some("0.1.0-amd64-gone"), Arch::Amd64)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("0.1.0-amd64-gone is not installed")
                && err.contains("0.2.0-amd64-new (system)")
                && err.contains("image newest"),
            "{err}"
        );
        let err = resolve(&paths, Some("../x"), Arch::Arm64)
            .unwrap_err()
            .to_string();
        assert!(err.contains("arm64 images: none"), "{err}");
    }

    #[test]
    fn test_broken_system_folders_are_named_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let (paths, system) = roots_with_system(dir.path());
        // A manifest that is not JSON, and a folder named after another version.
        fake_image_in(&system, "0.1.0-amd64-bad", Arch::Amd64);
        std::fs::write(system.join("0.1.0-amd64-bad").join(files::MANIFEST), "{").unwrap();
        fake_image_in(&system, "0.1.0-amd64-a", Arch::Amd64);
        std::fs::rename(system.join("0.1.0-amd64-a"), system.join("renamed")).unwrap();
        let listing = list(&paths).unwrap();
        assert!(listing.images.is_empty());
        let mut problems: Vec<String> = (listing.broken.iter())
            .map(|e| crate::lifecycle::error_chain(e))
            .collect();
        problems.sort();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(
            problems[0].contains("0.1.0-amd64-bad")
                && problems[0].contains("is invalid")
                && problems[0].contains("reinstall the package"),
            "{problems:?}"
        );
        assert!(
            problems[1].contains("renamed") && problems[1].contains("holds image 0.1.0-amd64-a"),
            "{problems:?}"
        );
        // Nothing else installed: the start names the broken folder.
        let chain = crate::lifecycle::error_chain(&resolve(&paths, None, Arch::Amd64).unwrap_err());
        assert!(chain.contains("system image folder"), "{chain}");
        // A good user image still boots.
        let mine = fake_image(&paths, "0.1.0-amd64-mine");
        assert_eq!(resolve(&paths, None, Arch::Amd64).unwrap().0, mine);

        // A system images "folder" that is a file: named, and the user's images still list.
        std::fs::remove_dir_all(&system).unwrap();
        std::fs::create_dir_all(dir.path().join("system")).unwrap();
        std::fs::write(&system, b"not a folder").unwrap();
        let listing = list(&paths).unwrap();
        assert_eq!(listing.images.len(), 1);
        let problem = listing.broken[0].to_string();
        assert!(
            problem.contains("cannot list the system images in") && problem.contains("images"),
            "{problem}"
        );
    }

    #[test]
    fn test_damaged_system_image_says_reinstall() {
        let dir = tempfile::tempdir().unwrap();
        let (paths, system) = roots_with_system(dir.path());
        fake_image_in(&system, "0.1.0-amd64-pkg", Arch::Amd64);
        std::fs::write(system.join("0.1.0-amd64-pkg").join(files::KERNEL), b"x").unwrap();
        let chain = crate::lifecycle::error_chain(&resolve(&paths, None, Arch::Amd64).unwrap_err());
        assert!(
            chain.contains("system image 0.1.0-amd64-pkg")
                && chain.contains("reinstall the package")
                && chain.contains("bzImage of image 0.1.0-amd64-pkg is damaged"),
            "{chain}"
        );
        // A missing file: named.
        std::fs::remove_file(system.join("0.1.0-amd64-pkg").join(files::ROOTFS)).unwrap();
        std::fs::write(
            system.join("0.1.0-amd64-pkg").join(files::KERNEL),
            b"kernel",
        )
        .unwrap();
        let chain = crate::lifecycle::error_chain(&resolve(&paths, None, Arch::Amd64).unwrap_err());
        assert!(
            chain.contains("cannot open") && chain.contains("rootfs.erofs"),
            "{chain}"
        );
    }
}
