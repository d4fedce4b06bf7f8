//! The host platform (operating system and architecture) as data, not `cfg`: the
//! accelerator choice and the QEMU command line take it as an argument, so a test run on
//! one host checks what every platform would get.

pub use rmachine_protocol::image::Arch;

/// A host operating system rmachine runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HostOs {
    Linux,
    Macos,
    Windows,
}

impl HostOs {
    /// From `std::env::consts::OS`.
    pub fn from_os_name(os: &str) -> Option<HostOs> {
        match os {
            "linux" => Some(HostOs::Linux),
            "macos" => Some(HostOs::Macos),
            "windows" => Some(HostOs::Windows),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            HostOs::Linux => "linux",
            HostOs::Macos => "macos",
            HostOs::Windows => "windows",
        }
    }
}

/// A host: its operating system and architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Platform {
    pub os: HostOs,
    pub arch: Arch,
}

impl Platform {
    /// This host (an OS rmachine does not know is taken for Linux, the closest).
    pub fn current() -> Platform {
        Platform {
            os: HostOs::from_os_name(std::env::consts::OS).unwrap_or(HostOs::Linux),
            arch: Arch::host(),
        }
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.os.as_str(), self.arch.kernel_name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_current_platform_matches_the_build() {
        let p = Platform::current();
        assert_eq!(p.os.as_str(), std::env::consts::OS);
        assert_eq!(p.arch.kernel_name(), std::env::consts::ARCH);
        assert_eq!(HostOs::from_os_name("freebsd"), None);
    }
}
