//! The CLI and the desktop are two faces of one library: for the same machines,
//! `rmachine ls --format json` and the desktop's machine list carry the same rows, field
//! for field (fake machines: no VM needed).

use rmachine_desktop::machines;
use rmachine_machine::config::{DriverKind, Settings};
use rmachine_machine::lifecycle::Lifecycle;
use rmachine_machine::paths::Paths;
use rmachine_machine::store::Store;

mod support;

#[test]
fn test_cli_ls_and_desktop_list_are_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let (home, cache, docker) = (
        dir.path().join("home"),
        dir.path().join("cache"),
        dir.path().join("docker"),
    );
    let lc = Lifecycle::new(Store::new(Paths::with_roots(&home, &cache)), docker.clone());
    let fake = |cpus| Settings {
        driver: Some(DriverKind::Fake),
        cpus: Some(cpus),
        memory_mib: Some(1024),
        ..Settings::default()
    };
    lc.create("alpha", &fake(1)).unwrap();
    lc.create("beta", &fake(2)).unwrap();
    lc.start("beta", &mut |_| {}).unwrap();
    lc.use_machine("beta").unwrap();
    // A machine whose settings file is broken is a row too.
    lc.create("gamma", &fake(1)).unwrap();
    std::fs::write(lc.store().paths().machine("gamma").config(), "cpus = [").unwrap();

    let out = std::process::Command::new(support::rmachine_bin())
        .args(["ls", "--format", "json"])
        .env("RMACHINE_HOME", &home)
        .env("RMACHINE_CACHE", &cache)
        .env("DOCKER_CONFIG", &docker)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cli: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let desktop = serde_json::to_value(machines::list(&lc).unwrap().machines).unwrap();
    assert_eq!(cli, desktop);
    let rows = cli.as_array().unwrap();
    let names: Vec<&str> = rows.iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["alpha", "beta", "gamma"]);
    assert_eq!(rows[1]["state"], "running");
    assert_eq!(rows[1]["active"], true);
    assert_eq!(rows[2]["state"], "error");
    for field in [
        "ports",
        "warnings",
        "detail",
        "can_start_stop",
        "docker_host",
    ] {
        assert!(rows[0].get(field).is_some(), "{field} missing: {}", rows[0]);
    }
}
