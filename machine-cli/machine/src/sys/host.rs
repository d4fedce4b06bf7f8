//! The host's resources, where /proc is Linux only.

/// The host's physical memory in MiB, if it can be read.
pub fn total_memory_mib() -> Option<u64> {
    let mut system = sysinfo::System::new();
    system.refresh_memory();
    Some(system.total_memory() / (1024 * 1024)).filter(|&m| m > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_total_memory_is_known() {
        let mib = total_memory_mib().expect("the host's memory");
        assert!(mib >= 256, "{mib} MiB");
    }
}
