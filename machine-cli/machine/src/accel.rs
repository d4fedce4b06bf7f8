//! Which hardware acceleration this host offers a Linux guest, and why.

// What the host offers, per OS.
#[cfg(target_os = "linux")]
#[path = "accel/linux.rs"]
mod os;
#[cfg(target_os = "macos")]
#[path = "accel/macos.rs"]
mod os;
#[cfg(windows)]
#[path = "accel/windows.rs"]
mod os;

/// A QEMU accelerator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    Kvm,
    Hvf,
    Whpx,
    Tcg,
}

impl Accel {
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Hvf => "hvf",
            Accel::Whpx => "whpx",
            Accel::Tcg => "tcg",
        }
    }

    pub fn parse(s: &str) -> Option<Accel> {
        [Accel::Kvm, Accel::Hvf, Accel::Whpx, Accel::Tcg]
            .into_iter()
            .find(|a| a.as_str() == s)
    }
}

/// The accelerator chosen for a Linux guest, with the reason in words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccelChoice {
    pub accel: Accel,
    pub reason: String,
}

/// Chooses the accelerator: `RMACHINE_ACCEL` if set; else the host's own (KVM on Linux
/// when `/dev/kvm` can be opened and is a real hypervisor, not PVM, the software nested
/// hypervisor that cannot run a stock Linux kernel; HVF on macOS; WHPX on Windows); else
/// TCG, software emulation.
pub fn choose() -> AccelChoice {
    if let Some(a) = std::env::var("RMACHINE_ACCEL")
        .ok()
        .as_deref()
        .and_then(Accel::parse)
    {
        return AccelChoice {
            accel: a,
            reason: "set by RMACHINE_ACCEL".into(),
        };
    }
    os::choose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_accel_names_round_trip() {
        for a in [Accel::Kvm, Accel::Hvf, Accel::Whpx, Accel::Tcg] {
            assert_eq!(Accel::parse(a.as_str()), Some(a));
        }
        assert_eq!(Accel::parse("xen"), None);
    }
}
