//! Builds the rmachine guest image of one architecture (amd64 or arm64): a kernel from
//! Debian trixie's `linux-source-6.12` with the project's config of that architecture,
//! and a read-only erofs root filesystem from trixie packages with the agent as
//! `/sbin/rmachine-agent`. An image of another architecture than the host's is
//! cross-compiled (kernel) and debootstrapped under QEMU's user-mode emulation (root
//! filesystem).
//!
//! Every heavy step is cached by content hash under the cache root ([`BuildDirs`]), the
//! architecture part of every key: the kernel by (architecture, source version, config),
//! the debootstrapped base by (architecture, package list), the final erofs by (base,
//! overlay files, agent binary). A finished image is a folder `images/<version>/` (the
//! version names the architecture) with a manifest of sha256 sums
//! ([`rmachine_protocol::image::Manifest`]), which the host's image store reads.
#![forbid(unsafe_code)]

mod apt;
mod command;
mod dirs;
pub mod host_tools;
mod kernel;
mod manifest;
mod rootfs;
mod tools;

use std::path::{Path, PathBuf};

pub use dirs::BuildDirs;
pub use rmachine_protocol::image::Arch;
use rmachine_protocol::image::{files as image_files, Manifest, ManifestError};
use sha2::{Digest, Sha256};
pub use tools::is_root;

/// Options of one build.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// The guest architecture.
    pub arch: Arch,
    /// The static agent binary (built for `arch`) to install as `/sbin/rmachine-agent`.
    pub agent: PathBuf,
    /// Parallel jobs for the kernel build.
    pub jobs: usize,
    /// Debian archive URL; `None`: the one the host's apt uses.
    pub mirror: Option<String>,
}

/// Where a build reports what it is doing.
pub trait Progress {
    /// A new step begins (`index` counts from 1).
    fn step(&self, index: usize, total: usize, what: &str);
    /// A detail within the current step (a compiled file, a package).
    fn detail(&self, what: &str);
    /// The current step finished, or was found in the cache.
    fn finish(&self, what: &str);
}

/// Why the image could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("missing tool `{tool}` (install the Debian package `{package}`)")]
    MissingTool { tool: String, package: String },
    #[error("missing file {path} (install the Debian package `{package}`)")]
    MissingFile { path: PathBuf, package: String },
    #[error(
        "building the image needs root (debootstrap uses chroot); run it as root or with sudo"
    )]
    NotRoot,
    #[error(
        "building an {arch} image on this host runs {arch} programs through binfmt_misc's \
         {handler} handler with the F flag, but {problem}: install the Debian packages \
         qemu-user-static and binfmt-support (then `update-binfmts --enable {handler}`)"
    )]
    NoBinfmt {
        arch: Arch,
        handler: String,
        problem: String,
    },
    #[error("agent binary {0} not found; build it with `cargo build --profile agent --target {target} -p rmachine-agent` or pass --agent", target = .1.agent_target())]
    NoAgent(PathBuf, Arch),
    #[error("agent binary {0} is not a static executable (build it for {target})", target = .1.agent_target())]
    AgentNotStatic(PathBuf, Arch),
    #[error("agent binary {path} is built for {found}, not for an {arch} image (build it for {target})", target = .arch.agent_target())]
    AgentWrongArch {
        path: PathBuf,
        found: String,
        arch: Arch,
    },
    #[error("cannot find a Debian mirror in the host's apt sources; pass --mirror URL")]
    NoMirror,
    #[error("Debian trixie has no package `{0}` (is the mirror reachable?)")]
    MissingPackage(String),
    #[error("`{command}` failed ({status}); last output:\n{tail}")]
    CommandFailed {
        command: String,
        status: String,
        tail: String,
    },
    #[error("cannot run `{command}`")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
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

impl ImageError {
    pub(crate) fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ImageError {
        let path = path.to_path_buf();
        move |source| ImageError::Io { what, path, source }
    }
}

/// Builds (or finds in the cache) the kernel and root filesystem and installs the image
/// under `images/<version>/`.
pub fn build(
    dirs: &BuildDirs,
    opts: &BuildOptions,
    progress: &dyn Progress,
) -> Result<Manifest, ImageError> {
    const STEPS: usize = 5;
    let arch = opts.arch;
    progress.step(1, STEPS, &format!("checking build tools ({arch} image)"));
    tools::check_all(arch)?;
    let agent = rootfs::check_agent(&opts.agent, arch)?;
    progress.finish("build tools present");

    progress.step(2, STEPS, "resolving Debian trixie packages");
    let apt = apt::Apt::setup(dirs, opts.mirror.as_deref(), progress)?;
    let source_version = apt.candidate(kernel::SOURCE_PACKAGE)?;
    progress.finish(&format!("{} {source_version}", kernel::SOURCE_PACKAGE));

    // The root filesystem's base is debootstrapped beside the kernel build: it mostly
    // waits (downloads; under emulation, the packages' scripts) while the kernel build
    // keeps the CPUs busy. An error of either is reported once both have ended.
    progress.step(
        3,
        STEPS,
        &format!("guest kernel ({arch}; the root filesystem's base beside it)"),
    );
    let (kernel, base) = std::thread::scope(|scope| {
        let base = scope.spawn(|| rootfs::prepare_base(dirs, &apt, arch, &agent));
        let kernel = kernel::build(dirs, &apt, arch, &source_version, opts.jobs, progress);
        if !base.is_finished() {
            progress.detail(if kernel.is_ok() {
                "waiting for the root filesystem's base (debootstrap)"
            } else {
                "the kernel build failed; waiting for debootstrap to end to report it"
            });
        }
        let base = base
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        (kernel, base)
    });
    let kernel = kernel?;
    let base_took = base?;

    progress.step(4, STEPS, &format!("guest root filesystem ({arch})"));
    if let Some(took) = base_took {
        progress.detail(&format!(
            "base debootstrapped in {:.0} s beside the kernel",
            took.as_secs_f64()
        ));
    }
    let rootfs = rootfs::build(dirs, &apt, arch, &agent, progress)?;

    progress.step(5, STEPS, "installing the image");
    let manifest = install(dirs, arch, &kernel, &rootfs, &source_version, &agent)?;
    progress.finish(&format!(
        "image {} in {}",
        manifest.version,
        dirs.image_dir(&manifest.version).display()
    ));
    Ok(manifest)
}

fn install(
    dirs: &BuildDirs,
    arch: Arch,
    kernel: &kernel::Built,
    rootfs: &rootfs::Built,
    source_version: &str,
    agent: &rootfs::Agent,
) -> Result<Manifest, ImageError> {
    let mut h = Sha256::new();
    h.update(kernel.key.as_bytes());
    h.update(rootfs.key.as_bytes());
    let version = image_version(arch, &hex::encode(h.finalize()));
    let dir = dirs.image_dir(&version);
    let staging = dir.with_extension("partial");
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(ImageError::io("cannot clear", &staging))?;
    }
    std::fs::create_dir_all(&staging).map_err(ImageError::io("cannot create", &staging))?;
    let kernel_dst = staging.join(image_files::kernel(arch));
    let rootfs_dst = staging.join(image_files::ROOTFS);
    link_or_copy(&kernel.kernel, &kernel_dst)?;
    link_or_copy(&rootfs.erofs, &rootfs_dst)?;
    let manifest = Manifest {
        version: version.clone(),
        arch,
        protocol: rmachine_protocol::PROTOCOL_VERSION,
        kernel: manifest::describe(&kernel_dst)?,
        rootfs: manifest::describe(&rootfs_dst)?,
        kernel_source: format!("{} {source_version}", kernel::SOURCE_PACKAGE),
        kernel_config_sha256: kernel.config_sha256.clone(),
        agent_sha256: agent.sha256.clone(),
        kernel_cmdline: rmachine_protocol::image::kernel_cmdline(arch).to_string(),
    };
    manifest.write(&staging)?;
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(ImageError::io("cannot replace", &dir))?;
    }
    std::fs::rename(&staging, &dir).map_err(ImageError::io("cannot install", &dir))?;
    Ok(manifest)
}

/// `<crate version>-<arch>-<12 hex digits of the content key>`.
fn image_version(arch: Arch, key_hex: &str) -> String {
    format!("{}-{arch}-{}", env!("CARGO_PKG_VERSION"), &key_hex[..12])
}

fn link_or_copy(from: &Path, to: &Path) -> Result<(), ImageError> {
    if std::fs::hard_link(from, to).is_ok() {
        return Ok(());
    }
    std::fs::copy(from, to)
        .map(|_| ())
        .map_err(ImageError::io("cannot copy to", to))
}

/// sha256 of a file, hex.
pub(crate) fn sha256_file(path: &Path) -> Result<String, ImageError> {
    let mut f = std::fs::File::open(path).map_err(ImageError::io("cannot open", path))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).map_err(ImageError::io("cannot read", path))?;
    Ok(hex::encode(h.finalize()))
}

/// sha256 over labelled parts, hex: the cache keys.
pub(crate) fn content_key(parts: &[(&str, &[u8])]) -> String {
    let mut h = Sha256::new();
    for (label, bytes) in parts {
        h.update(label.as_bytes());
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    }
    hex::encode(h.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_content_key_separates_parts() {
        let a = content_key(&[("x", b"ab"), ("y", b"c")]);
        let b = content_key(&[("x", b"a"), ("y", b"bc")]);
        assert_ne!(a, b);
        assert_eq!(a, content_key(&[("x", b"ab"), ("y", b"c")]));
    }

    #[test]
    fn test_image_version_names_the_arch() {
        let key = "0123456789abcdef0123";
        let v = image_version(Arch::Arm64, key);
        assert_eq!(
            v,
            format!("{}-arm64-0123456789ab", env!("CARGO_PKG_VERSION"))
        );
        assert_ne!(v, image_version(Arch::Amd64, key));
    }

    #[test]
    fn test_agent_errors_name_the_target_of_the_arch() {
        let e = ImageError::NoAgent("/a".into(), Arch::Arm64).to_string();
        assert!(e.contains("aarch64-unknown-linux-musl"), "{e}");
        let e = ImageError::AgentWrongArch {
            path: "/a".into(),
            found: "x86_64".into(),
            arch: Arch::Arm64,
        }
        .to_string();
        assert!(
            e.contains("x86_64") && e.contains("arm64") && e.contains("aarch64-unknown-linux-musl"),
            "{e}"
        );
    }
}
