//! `rmachine setup`: puts the docker CLI (when missing) and the compose and buildx CLI
//! plugins (Debian trixie's) where the docker CLI finds them, so `docker compose` and
//! `docker buildx` work against machines, and installs the host daemons rmachine-vmm
//! machines use: virtiofsd (shared folders) and passt (networking).

use std::path::PathBuf;

// The tools come from Debian packages, for a Linux host.
#[cfg(target_os = "linux")]
#[path = "setup/linux.rs"]
mod os;
#[cfg(not(target_os = "linux"))]
#[path = "setup/other.rs"]
mod os;

pub use os::run;

#[derive(Debug, clap::Args)]
pub struct SetupArgs {
    /// Where CLI plugins go (default: $DOCKER_CONFIG/cli-plugins or ~/.docker/cli-plugins).
    #[arg(long)]
    pub plugin_dir: Option<PathBuf>,
    /// Where a docker CLI goes when none is installed (default: ~/.local/bin, or
    /// /usr/local/bin as root).
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// Debian archive URL (default: the mirror the host's apt uses).
    #[arg(long)]
    pub mirror: Option<String>,
}
