//! Which hardware acceleration this host offers a Linux guest, and why.

use std::path::Path;

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

/// Chooses the accelerator: `RMACHINE_ACCEL` if set; else KVM when `/dev/kvm` can be
/// opened and is a real hypervisor (not PVM, the software nested hypervisor that cannot
/// run a stock Linux kernel); else HVF on macOS, WHPX on Windows; else TCG.
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
    choose_on(Path::new("/dev/kvm"), Path::new("/sys/module"))
}

fn choose_on(dev_kvm: &Path, sys_module: &Path) -> AccelChoice {
    if cfg!(target_os = "macos") {
        return AccelChoice {
            accel: Accel::Hvf,
            reason: "macOS: Hypervisor.framework".into(),
        };
    }
    if cfg!(target_os = "windows") {
        return AccelChoice {
            accel: Accel::Whpx,
            reason: "Windows: Hypervisor Platform".into(),
        };
    }
    let tcg = |reason: String| AccelChoice {
        accel: Accel::Tcg,
        reason,
    };
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(dev_kvm)
    {
        return tcg(format!(
            "{} unusable ({e}): software emulation",
            dev_kvm.display()
        ));
    }
    if sys_module.join("kvm_pvm").exists() {
        return tcg(format!(
            "{} is PVM (a software nested hypervisor that cannot run a stock Linux kernel): software emulation",
            dev_kvm.display()
        ));
    }
    AccelChoice {
        accel: Accel::Kvm,
        reason: format!("{} is usable", dev_kvm.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_choice_follows_dev_kvm_and_pvm() {
        let dir = tempfile::tempdir().unwrap();
        let kvm = dir.path().join("kvm");
        let modules = dir.path().join("module");
        std::fs::create_dir_all(&modules).unwrap();
        let c = choose_on(&kvm, &modules);
        assert_eq!(c.accel, Accel::Tcg);
        assert!(c.reason.contains("unusable"), "{}", c.reason);
        std::fs::write(&kvm, "").unwrap();
        assert_eq!(choose_on(&kvm, &modules).accel, Accel::Kvm);
        std::fs::create_dir_all(modules.join("kvm_pvm")).unwrap();
        let c = choose_on(&kvm, &modules);
        assert_eq!(c.accel, Accel::Tcg);
        assert!(c.reason.contains("PVM"), "{}", c.reason);
    }

    #[test]
    fn test_accel_names_round_trip() {
        for a in [Accel::Kvm, Accel::Hvf, Accel::Whpx, Accel::Tcg] {
            assert_eq!(Accel::parse(a.as_str()), Some(a));
        }
        assert_eq!(Accel::parse("xen"), None);
    }
}
