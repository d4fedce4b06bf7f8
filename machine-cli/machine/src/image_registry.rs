//! Guest images in an OCI registry: `rmachine image push REF` and `rmachine image pull
//! REF`, and the pull a start does when no image of the machine's architecture is
//! installed (the `image-source` setting). macOS and Windows hosts cannot build an image
//! (debootstrap, a Linux kernel build): it arrives ready-made, as podman machine pulls its
//! machine OS.
//!
//! The layout, an OCI artifact per architecture under an image index:
//!
//! ```text
//! REF (tag) ─ image index (application/vnd.oci.image.index.v1+json)
//!   ├─ platform linux/amd64 ─ image manifest, artifactType application/vnd.rmachine.image.v1
//!   │    config  application/vnd.rmachine.image.manifest.v1+json  = the image's manifest.json
//!   │    layer   application/vnd.rmachine.image.kernel             = bzImage
//!   │    layer   application/vnd.rmachine.image.rootfs.erofs       = rootfs.erofs
//!   └─ platform linux/arm64 ─ …the same with Image
//! ```
//!
//! A pull trusts nothing the registry says until it is checked: the index and the
//! manifest by their digests (the manifest's against the index), every blob by its digest
//! while it streams, and each layer's digest and size must be the very checksum and size
//! that the image's own manifest (the config blob) names for that file — so a file that
//! lands in the image folder is the file the image's builder hashed. The image's
//! architecture and agent protocol are checked before any layer is fetched; files are
//! written to `images/<version>.<pid>.partial/` (two pulls at once never share one) and
//! renamed into place only when all are
//! complete (a failed pull leaves nothing behind).
//!
//! Transport: HTTPS, except for a registry on the loopback (`localhost`, `127.0.0.0/8`,
//! `[::1]`), which is spoken to in plain HTTP as Docker does, or when the caller asks for
//! plain HTTP. Credentials: those `docker login` stored in the docker config's `auths`
//! (no credential helpers), else anonymous.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::manifest::{
    ImageIndexEntry, OciDescriptor, OciImageIndex, OciImageManifest, OCI_IMAGE_INDEX_MEDIA_TYPE,
    OCI_IMAGE_MEDIA_TYPE,
};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use rmachine_protocol::image::{files, Arch, Manifest};
use sha2::{Digest, Sha256};

use crate::image_store::{self, Installed};
use crate::paths::Paths;

/// The artifact type of an rmachine guest image's manifest.
pub const ARTIFACT_TYPE: &str = "application/vnd.rmachine.image.v1";
/// The config blob: the image's `manifest.json`.
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.rmachine.image.manifest.v1+json";
/// The kernel layer (`bzImage` or `Image`).
pub const KERNEL_MEDIA_TYPE: &str = "application/vnd.rmachine.image.kernel";
/// The root filesystem layer.
pub const ROOTFS_MEDIA_TYPE: &str = "application/vnd.rmachine.image.rootfs.erofs";
/// The annotation naming a layer's file (the OCI image spec's).
const TITLE: &str = "org.opencontainers.image.title";
/// The annotation carrying the image's version.
const VERSION_ANNOTATION: &str = "org.opencontainers.image.version";

/// Bounds on what the registry may send before it is checked (a manifest or index is a
/// few KiB; the image's manifest.json under 2 KiB).
const MAX_MANIFEST_BYTES: usize = 1 << 20;
const MAX_CONFIG_BYTES: i64 = 64 << 10;

/// Why a push or pull failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{reference:?} is not an image reference (e.g. registry.example.com/rmachine/guest:0.1.0): {message}")]
    BadReference { reference: String, message: String },
    #[error("registry {registry}: {operation}")]
    Registry {
        registry: String,
        operation: String,
        #[source]
        source: oci_client::errors::OciDistributionError,
    },
    #[error("{reference} is not an rmachine guest image: {why}")]
    NotAnImage { reference: String, why: String },
    #[error("{reference} has no {arch} image (it has: {available})")]
    NoArch {
        reference: String,
        arch: Arch,
        available: String,
    },
    #[error("{reference}: {what} does not match its digest (expected {expected}, got {actual}): the registry sent something else than it named")]
    Digest {
        reference: String,
        what: String,
        expected: String,
        actual: String,
    },
    #[error("{reference}: image {version}: {why}")]
    Mismatch {
        reference: String,
        version: String,
        why: String,
    },
    #[error("no image to push: {0}")]
    NothingToPush(String),
    #[error(transparent)]
    Store(#[from] image_store::ImageStoreError),
    #[error(transparent)]
    Manifest(#[from] image_store::ManifestError),
    #[error("the registry client stopped: {0}")]
    Internal(String),
}

/// A file of the image store that could not be read or written.
fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> RegistryError {
    let error = image_store::io(what, path);
    move |source| RegistryError::Store(error(source))
}

/// How to reach a registry.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Plain HTTP for every registry (loopback registries always are).
    pub plain_http: bool,
    /// The docker config folder whose `config.json` may hold credentials.
    pub docker_config: Option<PathBuf>,
}

/// What a pull did.
#[derive(Debug, Clone)]
pub struct Pulled {
    /// The image now installed.
    pub image: Installed,
    /// Whether it was already installed (nothing downloaded).
    pub already_installed: bool,
    /// Bytes downloaded.
    pub bytes: u64,
}

/// What a push did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Pushed {
    pub reference: String,
    /// The index's digest (`REF@DIGEST` pulls exactly this).
    pub digest: String,
    /// `version (arch)` of each image pushed.
    pub images: Vec<String>,
    /// Bytes uploaded (blobs the registry already had are not sent again).
    pub bytes: u64,
}

fn parse_reference(reference: &str) -> Result<Reference, RegistryError> {
    reference
        .parse::<Reference>()
        .map_err(|e| RegistryError::BadReference {
            reference: reference.to_string(),
            message: e.to_string(),
        })
}

/// Checks that `reference` is an image reference (a setting is checked when set).
pub fn check_reference(reference: &str) -> Result<(), RegistryError> {
    parse_reference(reference).map(|_| ())
}

/// Whether `registry` (`host[:port]`) is on the loopback.
fn is_loopback(registry: &str) -> bool {
    let host = match registry.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(rest),
        None => registry.rsplit_once(':').map_or(registry, |(h, _)| h),
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The credentials `docker login` stored for `registry` (`auths` with `auth`, base64 of
/// `user:password`), else anonymous. A config that cannot be read is anonymous too: a
/// registry that needs a login then says so itself.
fn auth_for(docker_config: Option<&Path>, registry: &str) -> RegistryAuth {
    use base64::Engine;
    let Some(dir) = docker_config else {
        return RegistryAuth::Anonymous;
    };
    let Ok(text) = std::fs::read(dir.join("config.json")) else {
        return RegistryAuth::Anonymous;
    };
    let Ok(config) = serde_json::from_slice::<serde_json::Value>(&text) else {
        return RegistryAuth::Anonymous;
    };
    let auths = config.get("auths").and_then(|a| a.as_object());
    let keys = [
        registry.to_string(),
        format!("https://{registry}"),
        format!("http://{registry}"),
    ];
    let entry = auths.and_then(|a| keys.iter().find_map(|k| a.get(k)));
    let decoded = entry
        .and_then(|e| e.get("auth"))
        .and_then(|a| a.as_str())
        .and_then(|a| base64::engine::general_purpose::STANDARD.decode(a).ok())
        .and_then(|b| String::from_utf8(b).ok());
    match decoded.as_deref().and_then(|d| d.split_once(':')) {
        Some((user, password)) => RegistryAuth::Basic(user.to_string(), password.to_string()),
        None => RegistryAuth::Anonymous,
    }
}

fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// The registry client for one reference, on a runtime of its own.
struct Session {
    client: Client,
    reference: Reference,
    auth: RegistryAuth,
    text: String,
}

impl Session {
    fn new(reference: &str, options: &Options) -> Result<Session, RegistryError> {
        install_crypto_provider();
        let parsed = parse_reference(reference)?;
        let registry = parsed.resolve_registry().to_string();
        let protocol = if options.plain_http || is_loopback(&registry) {
            ClientProtocol::Http
        } else {
            ClientProtocol::Https
        };
        let client = Client::new(ClientConfig {
            protocol,
            connect_timeout: Some(std::time::Duration::from_secs(15)),
            read_timeout: Some(std::time::Duration::from_secs(60)),
            ..Default::default()
        });
        let auth = auth_for(options.docker_config.as_deref(), parsed.registry());
        Ok(Session {
            client,
            reference: parsed,
            auth,
            text: reference.to_string(),
        })
    }

    fn registry_error(
        &self,
        operation: impl Into<String>,
    ) -> impl FnOnce(oci_client::errors::OciDistributionError) -> RegistryError {
        let registry = self.reference.registry().to_string();
        let operation = operation.into();
        move |source| RegistryError::Registry {
            registry,
            operation,
            source,
        }
    }

    /// A manifest or index by reference, its bytes checked against `expected` (a digest,
    /// when the caller knows it) and bounded in size.
    async fn manifest_bytes(
        &self,
        reference: &Reference,
        expected: Option<&str>,
        what: &str,
    ) -> Result<Vec<u8>, RegistryError> {
        let (bytes, _) = self
            .client
            .pull_manifest_raw(
                reference,
                &self.auth,
                &[OCI_IMAGE_INDEX_MEDIA_TYPE, OCI_IMAGE_MEDIA_TYPE],
            )
            .await
            .map_err(self.registry_error(format!("fetching the {what} of {reference}")))?;
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(RegistryError::NotAnImage {
                reference: self.text.clone(),
                why: format!("its {what} is {} bytes", bytes.len()),
            });
        }
        let actual = sha256_digest(&bytes);
        if let Some(expected) = expected.or(reference.digest()) {
            if actual != expected {
                return Err(RegistryError::Digest {
                    reference: self.text.clone(),
                    what: what.to_string(),
                    expected: expected.to_string(),
                    actual,
                });
            }
        }
        Ok(bytes.to_vec())
    }
}

/// reqwest's rustls needs a process-wide crypto provider on Linux: ring, which the rest
/// of the workspace builds (rustls deprecates it for lacking post-quantum key exchange;
/// aws-lc-rs, which has it, is a second C crypto library to build for every target).
/// macOS and Windows use the system's TLS.
fn install_crypto_provider() {
    #[cfg(target_os = "linux")]
    #[allow(deprecated)]
    {
        // Already installed (a second pull in this process) is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

/// Runs `work` on a runtime of its own in a thread of its own (the caller may be inside
/// another runtime), passing its progress lines to `progress` on the calling thread.
fn run<T: Send>(
    progress: &mut dyn FnMut(&str),
    work: impl FnOnce(mpsc::Sender<String>) -> Result<T, RegistryError> + Send,
) -> Result<T, RegistryError> {
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::scope(|scope| {
        let worker = scope.spawn(move || work(tx));
        for line in rx {
            progress(&line);
        }
        worker.join().unwrap_or_else(|_| {
            Err(RegistryError::Internal(
                "the registry client panicked".into(),
            ))
        })
    })
}

fn runtime() -> Result<tokio::runtime::Runtime, RegistryError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| RegistryError::Internal(format!("cannot start its runtime: {e}")))
}

/// Says how far a transfer is, every 10 % (a line each, for logs and terminals alike).
struct Meter {
    tx: mpsc::Sender<String>,
    verb: &'static str,
    file: String,
    total: u64,
    done: u64,
    said: u64,
}

impl Meter {
    fn new(tx: &mpsc::Sender<String>, verb: &'static str, file: &str, total: u64) -> Meter {
        let _ = tx.send(format!("{verb} {file} ({})", mib(total)));
        Meter {
            tx: tx.clone(),
            verb,
            file: file.to_string(),
            total,
            done: 0,
            said: 0,
        }
    }

    fn add(&mut self, n: u64) {
        self.done += n;
        let tenth = (self.done * 10)
            .checked_div(self.total)
            .unwrap_or(10)
            .min(10);
        if tenth > self.said && tenth < 10 {
            self.said = tenth;
            let _ = self.tx.send(format!(
                "{} {}: {}% of {}",
                self.verb,
                self.file,
                tenth * 10,
                mib(self.total)
            ));
        }
    }
}

/// Bytes as MiB with one decimal, as transfers are reported.
pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / 1048576.0)
}

/// The images a push sends by default: the newest usable image of each architecture
/// (the user's before the system's).
pub fn default_push_set(paths: &Paths) -> Result<Vec<Installed>, RegistryError> {
    let listing = image_store::list(paths)?;
    let mut chosen: Vec<Installed> = Vec::new();
    for arch in Arch::ALL {
        if let Some(image) = (listing.images.iter())
            .find(|i| i.manifest.arch == arch && i.usable())
            .cloned()
        {
            chosen.push(image);
        }
    }
    if chosen.is_empty() {
        return Err(RegistryError::NothingToPush(
            "no usable guest image is installed (`rmachine image build`)".into(),
        ));
    }
    Ok(chosen)
}

/// Pushes `images` (one per architecture) to `reference` as an image index; every file is
/// checked against its image's manifest first (a damaged image is not published).
pub fn push(
    reference: &str,
    images: &[Installed],
    options: &Options,
    progress: &mut dyn FnMut(&str),
) -> Result<Pushed, RegistryError> {
    let mut archs: Vec<Arch> = images.iter().map(|i| i.manifest.arch).collect();
    archs.sort_by_key(|a| a.as_str());
    archs.dedup();
    if archs.len() != images.len() {
        return Err(RegistryError::NothingToPush(
            "one image per architecture: an index cannot hold two of one".into(),
        ));
    }
    if images.is_empty() {
        return Err(RegistryError::NothingToPush("no image given".into()));
    }
    for image in images {
        progress(&format!(
            "checking image {} ({}) against its manifest",
            image.manifest.version, image.manifest.arch
        ));
        image_store::verify(&image.manifest, &image.dir)?;
    }
    let session = Session::new(reference, options)?;
    run(progress, move |tx| {
        runtime()?.block_on(async {
            let mut entries = Vec::new();
            let mut bytes = 0;
            for image in images {
                let (entry, sent) = push_one(&session, image, &tx).await?;
                entries.push(entry);
                bytes += sent;
            }
            let index = OciImageIndex {
                schema_version: 2,
                media_type: Some(OCI_IMAGE_INDEX_MEDIA_TYPE.to_string()),
                manifests: entries,
                artifact_type: Some(ARTIFACT_TYPE.to_string()),
                annotations: None,
            };
            let body = serde_json::to_vec(&index).expect("an index serializes");
            let digest = sha256_digest(&body);
            let _ = tx.send(format!("pushing the index {}", session.reference));
            session
                .client
                .push_manifest_raw(
                    &session.reference,
                    body,
                    OCI_IMAGE_INDEX_MEDIA_TYPE.parse().expect("a header value"),
                )
                .await
                .map_err(session.registry_error("pushing the image index"))?;
            Ok(Pushed {
                reference: session.text.clone(),
                digest,
                images: images
                    .iter()
                    .map(|i| format!("{} ({})", i.manifest.version, i.manifest.arch))
                    .collect(),
                bytes,
            })
        })
    })
}

/// Pushes one image's blobs and manifest (by digest); returns its index entry and the bytes
/// sent.
async fn push_one(
    session: &Session,
    image: &Installed,
    tx: &mpsc::Sender<String>,
) -> Result<(ImageIndexEntry, u64), RegistryError> {
    let m = &image.manifest;
    let config = std::fs::read(image.dir.join(files::MANIFEST))
        .map_err(io("cannot read", &image.dir.join(files::MANIFEST)))?;
    let config_desc = OciDescriptor {
        media_type: CONFIG_MEDIA_TYPE.to_string(),
        digest: sha256_digest(&config),
        size: config.len() as i64,
        ..Default::default()
    };
    let mut sent = 0;
    if !session
        .client
        .blob_exists(&session.reference, &config_desc.digest)
        .await
        .map_err(session.registry_error("asking for a blob"))?
    {
        session
            .client
            .push_blob(&session.reference, config.clone(), &config_desc.digest)
            .await
            .map_err(
                session.registry_error(format!("pushing the manifest of image {}", m.version)),
            )?;
        sent += config.len() as u64;
    }
    let mut layers = Vec::new();
    for (artifact, media_type) in [
        (&m.kernel, KERNEL_MEDIA_TYPE),
        (&m.rootfs, ROOTFS_MEDIA_TYPE),
    ] {
        let digest = format!("sha256:{}", artifact.sha256);
        let path = image.dir.join(&artifact.file);
        if session
            .client
            .blob_exists(&session.reference, &digest)
            .await
            .map_err(session.registry_error("asking for a blob"))?
        {
            let _ = tx.send(format!(
                "{} of {}: already in the registry",
                artifact.file, m.version
            ));
        } else {
            let file = tokio::fs::File::open(&path)
                .await
                .map_err(io("cannot open", &path))?;
            let mut meter = Meter::new(tx, "pushing", &artifact.file, artifact.size_bytes);
            let stream = futures_util::StreamExt::map(
                tokio_util::io::ReaderStream::with_capacity(file, 1 << 20),
                move |chunk| {
                    let chunk = chunk.map_err(oci_client::errors::OciDistributionError::from)?;
                    meter.add(chunk.len() as u64);
                    Ok(chunk)
                },
            );
            session
                .client
                .push_blob_stream(
                    &session.reference,
                    stream,
                    &digest,
                    Some(artifact.size_bytes),
                )
                .await
                .map_err(
                    session.registry_error(format!(
                        "pushing {} of image {}",
                        artifact.file, m.version
                    )),
                )?;
            sent += artifact.size_bytes;
        }
        layers.push(OciDescriptor {
            media_type: media_type.to_string(),
            digest,
            size: artifact.size_bytes as i64,
            annotations: Some(BTreeMap::from([(TITLE.to_string(), artifact.file.clone())])),
            ..Default::default()
        });
    }
    let manifest = OciImageManifest {
        schema_version: 2,
        media_type: Some(OCI_IMAGE_MEDIA_TYPE.to_string()),
        config: config_desc,
        layers,
        subject: None,
        artifact_type: Some(ARTIFACT_TYPE.to_string()),
        annotations: Some(BTreeMap::from([(
            VERSION_ANNOTATION.to_string(),
            m.version.clone(),
        )])),
    };
    let body = serde_json::to_vec(&manifest).expect("a manifest serializes");
    let digest = sha256_digest(&body);
    let size = body.len() as i64;
    session
        .client
        .push_manifest_raw(
            &session.reference.clone_with_digest(digest.clone()),
            body,
            OCI_IMAGE_MEDIA_TYPE.parse().expect("a header value"),
        )
        .await
        .map_err(session.registry_error(format!("pushing the manifest of image {}", m.version)))?;
    let platform = serde_json::from_value(serde_json::json!({
        "architecture": m.arch.as_str(),
        "os": "linux",
    }))
    .expect("a platform of a known architecture");
    Ok((
        ImageIndexEntry {
            media_type: OCI_IMAGE_MEDIA_TYPE.to_string(),
            digest,
            size,
            platform: Some(platform),
            annotations: Some(BTreeMap::from([(
                VERSION_ANNOTATION.to_string(),
                m.version.clone(),
            )])),
            artifact_type: Some(ARTIFACT_TYPE.to_string()),
        },
        sent,
    ))
}

/// The manifest digest of `arch` in an index (its bytes as the registry sent them), or the
/// architectures it has.
fn select_platform(
    index: &[u8],
    arch: Arch,
    reference: &str,
) -> Result<(String, i64), RegistryError> {
    let index: OciImageIndex =
        serde_json::from_slice(index).map_err(|e| RegistryError::NotAnImage {
            reference: reference.to_string(),
            why: format!("its index is not an OCI image index: {e}"),
        })?;
    let mut available = Vec::new();
    for entry in &index.manifests {
        let platform = entry
            .platform
            .as_ref()
            .and_then(|p| serde_json::to_value(p).ok());
        let entry_arch = platform
            .as_ref()
            .and_then(|p| p.get("architecture"))
            .and_then(|a| a.as_str())
            .unwrap_or("(none)")
            .to_string();
        let os = platform
            .as_ref()
            .and_then(|p| p.get("os"))
            .and_then(|a| a.as_str())
            .unwrap_or("linux");
        if entry_arch == arch.as_str() && os == "linux" {
            return Ok((entry.digest.clone(), entry.size));
        }
        available.push(entry_arch);
    }
    Err(RegistryError::NoArch {
        reference: reference.to_string(),
        arch,
        available: if available.is_empty() {
            "nothing".into()
        } else {
            available.join(", ")
        },
    })
}

/// Whether the bytes are an image index (else an image manifest).
fn is_index(bytes: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Probe {
        #[serde(rename = "mediaType")]
        media_type: Option<String>,
        manifests: Option<serde_json::Value>,
    }
    serde_json::from_slice::<Probe>(bytes).is_ok_and(|p| {
        p.media_type.as_deref() == Some(OCI_IMAGE_INDEX_MEDIA_TYPE)
            || (p.media_type.is_none() && p.manifests.is_some())
    })
}

/// Checks an image manifest's layers against the image's own manifest: the config is an
/// rmachine image manifest, of `arch`, and each of its files is one layer with exactly its
/// checksum and size. Returns (file, digest, size) to fetch, in order.
fn check_layers(
    oci: &OciImageManifest,
    image: &Manifest,
    arch: Arch,
    reference: &str,
) -> Result<Vec<OciDescriptor>, RegistryError> {
    let mismatch = |why: String| RegistryError::Mismatch {
        reference: reference.to_string(),
        version: image.version.clone(),
        why,
    };
    if image.arch != arch {
        return Err(mismatch(format!(
            "it is an {} image where an {arch} one was asked for",
            image.arch
        )));
    }
    if !valid_version(&image.version) {
        return Err(mismatch("its version is not a folder name".into()));
    }
    image.check_protocol()?;
    let expected = [
        (files::kernel(arch), &image.kernel),
        (files::ROOTFS, &image.rootfs),
    ];
    if oci.layers.len() != expected.len() {
        return Err(mismatch(format!(
            "{} layers where the image has {} files",
            oci.layers.len(),
            expected.len()
        )));
    }
    let mut fetch = Vec::new();
    for (file, artifact) in expected {
        if artifact.file != file {
            return Err(mismatch(format!(
                "its manifest names the file {:?} where {file:?} belongs",
                artifact.file
            )));
        }
        let digest = format!("sha256:{}", artifact.sha256);
        let layer = oci
            .layers
            .iter()
            .find(|l| {
                l.annotations
                    .as_ref()
                    .and_then(|a| a.get(TITLE))
                    .map(String::as_str)
                    == Some(file)
            })
            .ok_or_else(|| mismatch(format!("no layer holds {file}")))?;
        if layer.digest != digest || layer.size < 0 || layer.size as u64 != artifact.size_bytes {
            return Err(mismatch(format!(
                "the layer of {file} ({}, {} bytes) is not the file its manifest names ({digest}, {} bytes)",
                layer.digest, layer.size, artifact.size_bytes
            )));
        }
        fetch.push(layer.clone());
    }
    Ok(fetch)
}

/// A version from a registry as a folder name: the image store's rule, and only the
/// characters the image builder writes (untrusted input stays plain).
fn valid_version(version: &str) -> bool {
    image_store::valid_version(version)
        && version.len() <= 128
        && version
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '+'))
}

/// Pulls the `arch` image of `reference` into the user's images (unless that version is
/// installed already), checking everything on the way (see the module's text).
pub fn pull(
    paths: &Paths,
    reference: &str,
    arch: Arch,
    options: &Options,
    progress: &mut dyn FnMut(&str),
) -> Result<Pulled, RegistryError> {
    let session = Session::new(reference, options)?;
    let images_dir = paths.images_dir();
    let (image_manifest, bytes) = run(progress, |tx| {
        runtime()?.block_on(pull_async(&session, &images_dir, arch, &tx))
    })?;
    let dir = images_dir.join(&image_manifest.version);
    if bytes.is_some() {
        // Every file was checked against its sha256 as it streamed.
        image_store::record_verified(&image_manifest, &dir, paths);
    }
    let image = Installed {
        built: std::fs::metadata(dir.join(files::MANIFEST))
            .and_then(|m| m.modified())
            .unwrap_or(std::time::SystemTime::UNIX_EPOCH),
        manifest: image_manifest,
        source: image_store::Source::User,
        dir,
    };
    Ok(Pulled {
        image,
        already_installed: bytes.is_none(),
        bytes: bytes.unwrap_or(0),
    })
}

async fn pull_async(
    session: &Session,
    images_dir: &Path,
    arch: Arch,
    tx: &mpsc::Sender<String>,
) -> Result<(Manifest, Option<u64>), RegistryError> {
    let text = &session.text;
    let _ = tx.send(format!("fetching {text}"));
    let top = session
        .manifest_bytes(&session.reference, None, "index")
        .await?;
    let manifest_bytes = if is_index(&top) {
        let (digest, size) = select_platform(&top, arch, text)?;
        let by_digest = session.reference.clone_with_digest(digest.clone());
        let bytes = session
            .manifest_bytes(&by_digest, Some(&digest), &format!("{arch} manifest"))
            .await?;
        if size >= 0 && bytes.len() as i64 != size {
            return Err(RegistryError::Digest {
                reference: text.clone(),
                what: format!("the {arch} manifest's size"),
                expected: size.to_string(),
                actual: bytes.len().to_string(),
            });
        }
        bytes
    } else {
        top
    };
    let oci: OciImageManifest =
        serde_json::from_slice(&manifest_bytes).map_err(|e| RegistryError::NotAnImage {
            reference: text.clone(),
            why: format!("its manifest is not an OCI image manifest: {e}"),
        })?;
    if oci.config.media_type != CONFIG_MEDIA_TYPE {
        return Err(RegistryError::NotAnImage {
            reference: text.clone(),
            why: format!(
                "its config is {:?}, not {CONFIG_MEDIA_TYPE}",
                oci.config.media_type
            ),
        });
    }
    if oci.config.size < 0 || oci.config.size > MAX_CONFIG_BYTES {
        return Err(RegistryError::NotAnImage {
            reference: text.clone(),
            why: format!("its image manifest would be {} bytes", oci.config.size),
        });
    }
    let mut config = Vec::new();
    session
        .client
        .pull_blob(&session.reference, &oci.config, &mut config)
        .await
        .map_err(session.registry_error("fetching the image's manifest"))?;
    let image: Manifest =
        serde_json::from_slice(&config).map_err(|e| RegistryError::NotAnImage {
            reference: text.clone(),
            why: format!("its config is not an image manifest: {e}"),
        })?;
    let layers = check_layers(&oci, &image, arch, text)?;
    let dir = images_dir.join(&image.version);
    if dir.join(files::MANIFEST).exists() {
        let _ = tx.send(format!("image {} is installed already", image.version));
        return Ok((image, None));
    }
    // This process's own folder: another pull of the same image (a second start) writes
    // its own; the first to finish installs, the other finds it installed.
    let partial = images_dir.join(format!("{}.{}.partial", image.version, std::process::id()));
    let _ = std::fs::remove_dir_all(&partial);
    std::fs::create_dir_all(&partial).map_err(io("cannot create", &partial))?;
    let result = async {
        let mut bytes = 0;
        for layer in &layers {
            let file = layer
                .annotations
                .as_ref()
                .and_then(|a| a.get(TITLE))
                .expect("checked: every layer is titled")
                .clone();
            let path = partial.join(&file);
            let out = tokio::fs::File::create(&path)
                .await
                .map_err(io("cannot create", &path))?;
            let meter = Meter::new(tx, "pulling", &file, layer.size as u64);
            let mut out = MeteredWriter { inner: out, meter };
            session
                .client
                .pull_blob(&session.reference, layer, &mut out)
                .await
                .map_err(|e| match e {
                    oci_client::errors::OciDistributionError::DigestError(d) => {
                        RegistryError::Digest {
                            reference: text.clone(),
                            what: file.clone(),
                            expected: layer.digest.clone(),
                            actual: d.to_string(),
                        }
                    }
                    e => session.registry_error(format!("fetching {file}"))(e),
                })?;
            out.inner
                .sync_all()
                .await
                .map_err(io("cannot write", &path))?;
            bytes += layer.size as u64;
        }
        // The image's manifest exactly as its builder wrote it (its checksums are what
        // every start verifies).
        let manifest_path = partial.join(files::MANIFEST);
        std::fs::write(&manifest_path, &config).map_err(io("cannot write", &manifest_path))?;
        if let Err(e) = std::fs::rename(&partial, &dir) {
            if dir.join(files::MANIFEST).exists() {
                // Another pull installed it meanwhile.
                let _ = std::fs::remove_dir_all(&partial);
                return Ok(bytes);
            }
            return Err(io("cannot move the pulled image to", &dir)(e));
        }
        Ok::<u64, RegistryError>(bytes)
    }
    .await;
    match result {
        Ok(bytes) => Ok((image, Some(bytes))),
        Err(e) => {
            let _ = std::fs::remove_dir_all(&partial);
            Err(e)
        }
    }
}

/// A file writer that tells its meter what it wrote, and refuses bytes past the size the
/// image's manifest names (an endless blob cannot fill the host's disk before its digest
/// is found wrong).
struct MeteredWriter {
    inner: tokio::fs::File,
    meter: Meter,
}

impl tokio::io::AsyncWrite for MeteredWriter {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = &mut *self;
        if this.meter.done + buf.len() as u64 > this.meter.total {
            return std::task::Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "the registry sent more than the {} bytes of {}",
                    this.meter.total, this.meter.file
                ),
            )));
        }
        let polled = std::pin::Pin::new(&mut this.inner).poll_write(cx, buf);
        if let std::task::Poll::Ready(Ok(n)) = &polled {
            this.meter.add(*n as u64);
        }
        polled
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rmachine_protocol::image::Artifact;

    fn image(arch: Arch) -> Manifest {
        let artifact = |file: &str, byte: u8| Artifact {
            file: file.into(),
            sha256: hex::encode([byte; 32]),
            size_bytes: 100 + byte as u64,
        };
        Manifest {
            version: "0.1.0-abc".into(),
            arch,
            protocol: rmachine_protocol::PROTOCOL_VERSION,
            kernel: artifact(files::kernel(arch), 1),
            rootfs: artifact(files::ROOTFS, 2),
            kernel_source: "linux".into(),
            kernel_config_sha256: "00".into(),
            agent_sha256: "00".into(),
            kernel_cmdline: "console=ttyS0".into(),
        }
    }

    fn layer(file: &str, sha: u8, size: i64) -> OciDescriptor {
        OciDescriptor {
            media_type: KERNEL_MEDIA_TYPE.into(),
            digest: format!("sha256:{}", hex::encode([sha; 32])),
            size,
            annotations: Some(BTreeMap::from([(TITLE.to_string(), file.to_string())])),
            ..Default::default()
        }
    }

    fn oci(layers: Vec<OciDescriptor>) -> OciImageManifest {
        OciImageManifest {
            schema_version: 2,
            media_type: Some(OCI_IMAGE_MEDIA_TYPE.into()),
            config: OciDescriptor::default(),
            layers,
            subject: None,
            artifact_type: None,
            annotations: None,
        }
    }

    #[test]
    fn test_layers_must_be_exactly_the_files_the_image_manifest_names() {
        let m = image(Arch::Amd64);
        let good = oci(vec![
            layer("bzImage", 1, 101),
            layer("rootfs.erofs", 2, 102),
        ]);
        let fetch = check_layers(&good, &m, Arch::Amd64, "r").unwrap();
        assert_eq!(fetch.len(), 2);
        // A layer whose digest is not the manifest's checksum.
        let swapped = oci(vec![
            layer("bzImage", 2, 101),
            layer("rootfs.erofs", 2, 102),
        ]);
        let e = check_layers(&swapped, &m, Arch::Amd64, "r")
            .unwrap_err()
            .to_string();
        assert!(e.contains("the layer of bzImage"), "{e}");
        // A wrong size, a missing file, an extra layer.
        let sized = oci(vec![layer("bzImage", 1, 5), layer("rootfs.erofs", 2, 102)]);
        assert!(check_layers(&sized, &m, Arch::Amd64, "r").is_err());
        let missing = oci(vec![layer("bzImage", 1, 101), layer("other", 2, 102)]);
        let e = check_layers(&missing, &m, Arch::Amd64, "r")
            .unwrap_err()
            .to_string();
        assert!(e.contains("no layer holds rootfs.erofs"), "{e}");
        let extra = oci(vec![
            layer("bzImage", 1, 101),
            layer("rootfs.erofs", 2, 102),
            layer("x", 3, 1),
        ]);
        assert!(check_layers(&extra, &m, Arch::Amd64, "r").is_err());
    }

    #[test]
    fn test_untrusted_image_manifests_are_refused_by_name() {
        let good = oci(vec![
            layer("bzImage", 1, 101),
            layer("rootfs.erofs", 2, 102),
        ]);
        // Another architecture than asked.
        let e = check_layers(&good, &image(Arch::Arm64), Arch::Amd64, "r")
            .unwrap_err()
            .to_string();
        assert!(e.contains("arm64 image where an amd64"), "{e}");
        // A file name that would leave the image folder.
        let mut evil = image(Arch::Amd64);
        evil.kernel.file = "../../bin/sh".into();
        let e = check_layers(&good, &evil, Arch::Amd64, "r")
            .unwrap_err()
            .to_string();
        assert!(e.contains("names the file"), "{e}");
        // A version that is not a folder name.
        let mut evil = image(Arch::Amd64);
        evil.version = "../x".into();
        assert!(check_layers(&good, &evil, Arch::Amd64, "r").is_err());
        // Another agent protocol.
        let mut old = image(Arch::Amd64);
        old.protocol += 1;
        let e = check_layers(&good, &old, Arch::Amd64, "r")
            .unwrap_err()
            .to_string();
        assert!(e.contains("protocol"), "{e}");
    }

    #[test]
    fn test_the_index_entry_of_the_architecture_is_chosen() {
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_IMAGE_INDEX_MEDIA_TYPE,
            "manifests": [
                {"mediaType": OCI_IMAGE_MEDIA_TYPE, "digest": "sha256:aa", "size": 10,
                 "platform": {"architecture": "amd64", "os": "linux"}},
                {"mediaType": OCI_IMAGE_MEDIA_TYPE, "digest": "sha256:bb", "size": 11,
                 "platform": {"architecture": "arm64", "os": "linux"}},
            ]
        });
        let bytes = serde_json::to_vec(&index).unwrap();
        assert!(is_index(&bytes));
        assert_eq!(
            select_platform(&bytes, Arch::Arm64, "r").unwrap(),
            ("sha256:bb".into(), 11)
        );
        let only_amd64 = serde_json::json!({
            "schemaVersion": 2, "mediaType": OCI_IMAGE_INDEX_MEDIA_TYPE,
            "manifests": [{"mediaType": OCI_IMAGE_MEDIA_TYPE, "digest": "sha256:aa", "size": 10,
                           "platform": {"architecture": "amd64", "os": "linux"}}]
        });
        let e = select_platform(&serde_json::to_vec(&only_amd64).unwrap(), Arch::Arm64, "r")
            .unwrap_err()
            .to_string();
        assert!(e.contains("has no arm64 image (it has: amd64)"), "{e}");
        assert!(!is_index(
            br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}"#
        ));
        assert!(select_platform(b"garbage", Arch::Amd64, "r").is_err());
    }

    #[test]
    fn test_loopback_registries_and_references() {
        for r in ["localhost:5000", "127.0.0.1:5055", "[::1]:80", "localhost"] {
            assert!(is_loopback(r), "{r}");
        }
        for r in ["registry.example.com", "10.0.0.1:5000", "ghcr.io"] {
            assert!(!is_loopback(r), "{r}");
        }
        assert!(parse_reference("localhost:5000/rmachine/guest:1").is_ok());
        let e = parse_reference("UPPER/Case:??").unwrap_err().to_string();
        assert!(e.contains("is not an image reference"), "{e}");
    }

    #[tokio::test]
    async fn test_a_blob_longer_than_its_size_is_refused_as_it_streams() {
        use tokio::io::AsyncWriteExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rootfs.erofs");
        let (tx, rx) = mpsc::channel();
        let mut out = MeteredWriter {
            inner: tokio::fs::File::create(&path).await.unwrap(),
            meter: Meter::new(&tx, "pulling", "rootfs.erofs", 4),
        };
        out.write_all(b"abcd").await.unwrap();
        let e = out.write_all(b"e").await.unwrap_err();
        assert!(
            e.to_string()
                .contains("more than the 4 bytes of rootfs.erofs"),
            "{e}"
        );
        out.flush().await.unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"abcd");
        drop(out);
        drop(tx);
        let said: Vec<String> = rx.iter().collect();
        assert_eq!(said[0], "pulling rootfs.erofs (0.0 MiB)", "{said:?}");
    }

    #[test]
    fn test_credentials_come_from_the_docker_config() {
        let dir = tempfile::tempdir().unwrap();
        // user:secret
        std::fs::write(
            dir.path().join("config.json"),
            r#"{"auths":{"reg.example.com":{"auth":"dXNlcjpzZWNyZXQ="}}}"#,
        )
        .unwrap();
        match auth_for(Some(dir.path()), "reg.example.com") {
            RegistryAuth::Basic(u, p) => assert_eq!((u.as_str(), p.as_str()), ("user", "secret")),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            auth_for(Some(dir.path()), "other.example.com"),
            RegistryAuth::Anonymous
        ));
        std::fs::write(dir.path().join("config.json"), "{ broken").unwrap();
        assert!(matches!(
            auth_for(Some(dir.path()), "reg.example.com"),
            RegistryAuth::Anonymous
        ));
    }
}
