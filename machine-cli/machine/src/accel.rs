//! Which hardware acceleration this host offers a Linux guest, and why. Hardware
//! acceleration (kvm, hvf, whpx) runs guests of the host's own architecture only; a guest
//! of another architecture (arm64 on an x86_64 host) runs under software emulation.

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

use crate::platform::{Arch, Platform};

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

/// Chooses the accelerator for a guest of architecture `guest` on this host: [`choose`],
/// then [`for_guest`].
pub fn choose_for(guest: Arch) -> AccelChoice {
    for_guest(choose(), Platform::current(), guest)
}

/// The accelerator for a guest of architecture `guest` on `host`, given what the host
/// offers (`offered`): the same, unless the guest is of another architecture, which only
/// software emulation runs.
pub fn for_guest(offered: AccelChoice, host: Platform, guest: Arch) -> AccelChoice {
    if offered.accel == Accel::Tcg || host.arch == guest {
        return offered;
    }
    AccelChoice {
        accel: Accel::Tcg,
        reason: format!(
            "{guest} guest on an {} host: software emulation ({} runs only {} guests)",
            host.arch.kernel_name(),
            offered.accel.as_str(),
            host.arch
        ),
    }
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

    #[test]
    fn test_a_guest_of_another_arch_runs_under_tcg_only() {
        use crate::platform::HostOs;
        let offered = |accel: Accel| AccelChoice {
            accel,
            reason: "offered".into(),
        };
        let host = |os, arch| Platform { os, arch };
        // The host's own architecture keeps what the host offers.
        for (os, arch, accel) in [
            (HostOs::Linux, Arch::Amd64, Accel::Kvm),
            (HostOs::Linux, Arch::Arm64, Accel::Kvm),
            (HostOs::Macos, Arch::Arm64, Accel::Hvf),
            (HostOs::Macos, Arch::Amd64, Accel::Hvf),
            (HostOs::Windows, Arch::Amd64, Accel::Whpx),
        ] {
            let c = for_guest(offered(accel), host(os, arch), arch);
            assert_eq!(c, offered(accel));
        }
        // Another architecture: TCG, saying why.
        let c = for_guest(
            offered(Accel::Kvm),
            host(HostOs::Linux, Arch::Amd64),
            Arch::Arm64,
        );
        assert_eq!(c.accel, Accel::Tcg);
        assert!(
            c.reason.contains("arm64 guest on an x86_64 host") && c.reason.contains("kvm"),
            "{}",
            c.reason
        );
        let c = for_guest(
            offered(Accel::Hvf),
            host(HostOs::Macos, Arch::Arm64),
            Arch::Amd64,
        );
        assert_eq!(c.accel, Accel::Tcg);
        let c = for_guest(
            offered(Accel::Whpx),
            host(HostOs::Windows, Arch::Amd64),
            Arch::Arm64,
        );
        assert_eq!(c.accel, Accel::Tcg);
        // TCG stays TCG with its own reason.
        let c = for_guest(
            offered(Accel::Tcg),
            host(HostOs::Linux, Arch::Amd64),
            Arch::Arm64,
        );
        assert_eq!(c, offered(Accel::Tcg));
    }
}
