//! Linux: KVM where `/dev/kvm` is a hypervisor that runs a stock kernel.

use std::path::Path;

use super::{Accel, AccelChoice};

pub(super) fn choose() -> AccelChoice {
    choose_on(Path::new("/dev/kvm"), Path::new("/sys/module"))
}

fn choose_on(dev_kvm: &Path, sys_module: &Path) -> AccelChoice {
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
}
