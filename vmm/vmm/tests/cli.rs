//! The command line and configuration refusal, without KVM.

use std::process::Command;

fn vmm() -> Command {
    Command::new(env!("CARGO_BIN_EXE_rmachine-vmm"))
}

#[test]
fn test_help_lists_config_flag() {
    let out = vmm().arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("--config <FILE>"), "{text}");
}

#[test]
fn test_impossible_config_is_refused_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let kernel = dir.path().join("vmlinux");
    std::fs::write(&kernel, b"x").unwrap();
    let cases = [
        (
            serde_json::json!({"kernel": {"path": "/nonexistent"}}),
            "kernel.path",
        ),
        (
            serde_json::json!({"kernel": {"path": kernel}, "memory_mib": 1u64 << 40}),
            "memory_mib",
        ),
        (
            serde_json::json!({"kernel": {"path": kernel}, "disks": [{"id": "a", "path": "/nonexistent.img"}]}),
            "disks[0].path",
        ),
        (
            serde_json::json!({"kernel": {"path": kernel}, "rng": {"slot": 1}, "vsock": {"guest_cid": 3, "uds_path": dir.path().join("v"), "slot": 1}}),
            "rng.slot",
        ),
        (
            serde_json::json!({"kernel": {"path": kernel}, "bogus": 1}),
            "unknown field `bogus`",
        ),
    ];
    for (config, field) in cases {
        let path = dir.path().join("vm.json");
        std::fs::write(&path, config.to_string()).unwrap();
        let out = vmm().arg("--config").arg(&path).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{config}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(field), "{field} not in {stderr}");
    }
}
