//! Machine state changes, as the UI hears them: a thread checks the modification times
//! of the machines' `state.json` and `machine.toml`, `defaults.toml` and the docker
//! CLI's `config.json` (the current context), and rebuilds the machine list only when
//! one changed, or every few seconds (a host agent that died leaves its file as it was).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use rmachine_machine::lifecycle::Lifecycle;

use crate::machines::{self, MachineList};

/// How often the files are checked, in milliseconds.
pub const CHECK_INTERVAL_MS: u64 = 300;
/// How often the list is rebuilt even when no file changed, in milliseconds.
pub const REBUILD_INTERVAL_MS: u64 = 3000;

/// What the watched files look like now: each one's path, length and modification time.
pub fn fingerprint(lc: &Lifecycle) -> Vec<(PathBuf, u64, Option<SystemTime>)> {
    let mut files = vec![
        lc.store().paths().defaults_file(),
        lc.docker_config().join("config.json"),
    ];
    if let Ok(names) = lc.store().names() {
        for n in names {
            let m = lc.store().paths().machine(&n);
            files.push(m.state());
            files.push(m.config());
        }
    }
    files.push(lc.store().paths().machines_dir());
    files
        .into_iter()
        .map(|p| {
            let (len, mtime) = stat(&p);
            (p, len, mtime)
        })
        .collect()
}

fn stat(p: &Path) -> (u64, Option<SystemTime>) {
    match std::fs::metadata(p) {
        Ok(m) => (m.len(), m.modified().ok()),
        Err(_) => (0, None),
    }
}

/// Watches until `on_change` returns false; calls it with each new machine list.
pub fn watch(lc: &Lifecycle, mut on_change: impl FnMut(&MachineList) -> bool) {
    let mut last_print = Vec::new();
    let mut last_list: Option<MachineList> = None;
    let mut last_rebuild = Instant::now();
    loop {
        let print = fingerprint(lc);
        let due = last_rebuild.elapsed() >= Duration::from_millis(REBUILD_INTERVAL_MS);
        if print != last_print || due || last_list.is_none() {
            last_print = print;
            last_rebuild = Instant::now();
            match machines::list(lc) {
                Ok(list) => {
                    if last_list.as_ref() != Some(&list) {
                        if !on_change(&list) {
                            return;
                        }
                        last_list = Some(list);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot list machines"),
            }
        }
        std::thread::sleep(Duration::from_millis(CHECK_INTERVAL_MS));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rmachine_machine::config::{DriverKind, Settings};
    use rmachine_machine::paths::Paths;
    use rmachine_machine::store::Store;

    #[test]
    fn test_watch_reports_a_state_change() {
        let dir = tempfile::tempdir().unwrap();
        let lc = Lifecycle::new(
            Store::new(Paths::with_roots(
                dir.path().join("h"),
                dir.path().join("c"),
            )),
            dir.path().join("d"),
        );
        lc.create(
            "dev",
            &Settings {
                driver: Some(DriverKind::Fake),
                ..Default::default()
            },
        )
        .unwrap();
        let lc2 = lc.clone();
        let mut seen = Vec::new();
        let mut started = false;
        watch(&lc, |list| {
            seen.push(list.machines[0].state.clone());
            if !started {
                started = true;
                lc2.start("dev", &mut |_| {}).unwrap();
            }
            seen.len() < 2
        });
        assert_eq!(seen, ["stopped", "running"]);
    }
}
