//! Saving and resuming a machine (issue 16, "the user's side"), on a real VM under the
//! `qemu` driver: `rmachine stop` saves a `--no-mounts` machine with a running container
//! that publishes a port and wrote to a volume; `rmachine start` resumes it (the same
//! container still running, the port served again, the guest clock set); `stop
//! --no-save` shuts down and the next start boots cold; a machine with a shared folder
//! cannot be saved by this QEMU and says why; a truncated state is refused by name and
//! the machine boots cold with the volume's data intact; `rmachine rm` removes the state.
//!
//! Two cold boots and one resume (a cold boot is ~25-40 s here): the first boot also
//! shows a start with no saved state, the second one a damaged state refused, and it
//! runs with a shared folder for the stop that cannot save.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rmachine_e2e::*;

const M: &str = "sv";

fn machine_dir(env: &MachineEnv) -> PathBuf {
    env.home.join("machines").join(M)
}

fn inspect_state(env: &MachineEnv) -> serde_json::Value {
    let v: serde_json::Value =
        serde_json::from_str(&env.rmachine_ok(&["inspect", M])).expect("inspect json");
    v["state"].clone()
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// The counter the container's loop writes to its tmpfs every second: it survives only
/// while the same container process runs.
fn counter(env: &MachineEnv) -> u64 {
    env.docker_ok(&["exec", "web", "cat", "/run/counter"])
        .trim()
        .parse()
        .expect("a number in the counter file")
}

fn serves(port: u16) {
    wait_until(
        "the published port serving",
        Duration::from_secs(30),
        || http_get(port, "/").and_then(|b| if b.trim() == "kept" { Ok(()) } else { Err(b) }),
    );
}

/// `rmachine ARGS` succeeded: its stdout and stderr (a start's last words are on
/// stderr, with its progress).
fn rmachine_all(env: &MachineEnv, args: &[&str]) -> String {
    let out = env.rmachine(args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "rmachine {}: {text}", args.join(" "));
    text
}

fn saved_files(dir: &Path) -> (bool, bool) {
    (
        dir.join("saved.json").exists(),
        dir.join("saved.vmstate").exists(),
    )
}

#[test]
fn test_stop_saves_and_start_resumes_or_boots_cold_saying_why() {
    let began = Instant::now();
    let env = MachineEnv::new();
    let dir = machine_dir(&env);
    env.rmachine_ok(&[
        "create",
        M,
        "--driver",
        "qemu",
        "--no-mounts",
        "--memory",
        "1G",
        "--disk",
        "4G",
    ]);
    env.rmachine_ok(&["start", M]);
    eprintln!("cold start: {:?}", began.elapsed());

    // A container that publishes a port, wrote to a volume (not synced by anyone but the
    // save), and counts in its tmpfs.
    let work = env.dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    env.docker_ok(&[
        "import",
        busybox_tarball(&work).to_str().unwrap(),
        "e2e/busybox:1",
    ]);
    let port = free_local_port();
    let mapping = format!("127.0.0.1:{port}:80");
    env.docker_ok(&[
        "run",
        "-d",
        "--name",
        "web",
        "-p",
        &mapping,
        "-v",
        "keep:/data",
        "--tmpfs",
        "/run",
        "e2e/busybox:1",
        "sh",
        "-c",
        "mkdir -p /www && echo kept > /www/index.html && echo written-before-the-save > /data/f \
         && (n=0; while true; do n=$((n+1)); echo $n > /run/counter; sleep 1; done) & \
         exec httpd -f -p 80 -h /www",
    ]);
    serves(port);
    wait_until("the counter", Duration::from_secs(30), || {
        env.docker(&["exec", "web", "cat", "/run/counter"], None, &[])
            .status
            .success()
            .then_some(())
            .ok_or_else(|| "no counter yet".to_string())
    });
    let started_at = env.docker_ok(&["inspect", "-f", "{{.State.StartedAt}}", "web"]);

    // `rmachine stop` saves: status says stopped with a saved state; ls shows `stopped
    // (saved)` (JSON: state stopped, saved_state set).
    let t = Instant::now();
    let out = env.rmachine_ok(&["stop", M]);
    eprintln!("save: {:?}: {}", t.elapsed(), out.trim());
    assert!(out.contains(&format!("machine {M} saved (")), "{out}");
    let before = std::fs::read_to_string(dir.join("saved.json")).unwrap();
    let header: serde_json::Value = serde_json::from_str(&before).unwrap();
    assert_eq!(header["version"], 1, "{header}");
    assert!(
        header["vmm_version"].as_str().unwrap().starts_with("7.2"),
        "{header}"
    );
    let status = env.rmachine_ok(&["status", M]);
    assert!(
        status.contains(&format!("machine {M}: stopped, saved state of")),
        "{status}"
    );
    let listed = env.listed(M);
    assert_eq!(listed["state"], "stopped", "{listed}");
    assert!(
        listed["saved_state"]["size_bytes"].as_u64().unwrap() > 0,
        "{listed}"
    );
    let table = env.rmachine_ok(&["ls"]);
    assert!(table.contains("stopped (saved)"), "{table}");
    let status_json: serde_json::Value =
        serde_json::from_str(&env.rmachine_ok(&["status", M, "--format", "json"])).unwrap();
    assert_eq!(status_json["last_stop"]["saved"], true, "{status_json}");
    assert!(status_json["saved_state"].is_object(), "{status_json}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for f in ["saved.json", "saved.vmstate"] {
            let mode = std::fs::metadata(dir.join(f)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{f}");
        }
    }
    // A copy, to bring back damaged later.
    let kept = work.join("kept");
    std::fs::create_dir_all(&kept).unwrap();
    std::fs::copy(dir.join("saved.json"), kept.join("saved.json")).unwrap();
    std::fs::copy(dir.join("saved.vmstate"), kept.join("saved.vmstate")).unwrap();

    // `rmachine start` resumes: the same container still runs, the port serves on
    // localhost again, docker works, the guest clock is the host's.
    let t = Instant::now();
    let out = rmachine_all(&env, &["start", M]);
    let resume_took = t.elapsed();
    eprintln!("resume: {resume_took:?}: {}", out.trim());
    assert!(out.contains("resumed from its saved state"), "{out}");
    let state = inspect_state(&env);
    assert_eq!(state["start_kind"], "resume", "{state}");
    assert!(state["resume_ms"].as_u64().is_some(), "{state}");
    assert!(state.get("cold_boot_reason").is_none(), "{state}");
    let phases: Vec<&str> = state["start_phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    for step in [
        "VM resumed",
        "agent answered ping",
        "guest clock set from the host's",
        "docker.sock answers _ping",
    ] {
        assert!(phases.contains(&step), "{step} missing: {phases:?}");
    }
    assert_eq!(
        saved_files(&dir),
        (false, false),
        "a resumed state is removed"
    );
    // The guest clock, right after the start (under software emulation it runs slow:
    // the start set it, so it is within a few seconds).
    let host_before = unix_now();
    let guest: f64 = env
        .docker_ok(&["exec", "web", "date", "+%s"])
        .trim()
        .parse()
        .unwrap();
    let host_after = unix_now();
    assert!(
        guest >= host_before - 5.0 && guest <= host_after + 5.0,
        "guest clock {guest}, host {host_before}..{host_after}"
    );
    assert_eq!(
        env.docker_ok(&["inspect", "-f", "{{.State.StartedAt}}", "web"]),
        started_at,
        "the container was not restarted"
    );
    let n = counter(&env);
    serves(port);
    wait_until("the counter going on", Duration::from_secs(30), || {
        let m = counter(&env);
        (m > n).then_some(()).ok_or(format!("still {m}"))
    });
    let version = env.docker_ok(&["version", "--format", "{{.Server.Version}}"]);
    assert!(version.trim().starts_with("26."), "{version}");

    // `stop --no-save`: a full shutdown, and no state is left for the next start (which
    // then boots cold, as the first start did: there is nothing to resume).
    let out = env.rmachine_ok(&["stop", "--no-save", M]);
    assert!(
        out.contains("not saved: --no-save asks for a full shutdown"),
        "{out}"
    );
    assert_eq!(saved_files(&dir), (false, false));
    let status = env.rmachine_ok(&["status", M]);
    assert!(
        status.contains(&format!("machine {M}: stopped\n")),
        "{status}"
    );
    assert!(
        status.contains("last stop: not saved (--no-save"),
        "{status}"
    );

    // A damaged (truncated) state: refused by name, the machine boots cold, the volume's
    // data is intact. (The copy made earlier, cut in half.) The machine now also shares
    // a folder, for the next step.
    std::fs::copy(kept.join("saved.json"), dir.join("saved.json")).unwrap();
    let len = std::fs::metadata(kept.join("saved.vmstate")).unwrap().len();
    {
        use std::io::{Read, Write};
        let mut half = Vec::new();
        std::fs::File::open(kept.join("saved.vmstate"))
            .unwrap()
            .take(len / 2)
            .read_to_end(&mut half)
            .unwrap();
        std::fs::File::create(dir.join("saved.vmstate"))
            .unwrap()
            .write_all(&half)
            .unwrap();
    }
    let status = env.rmachine_ok(&["status", M]);
    assert!(status.contains("will not be resumed"), "{status}");
    let shared = work.join("shared");
    std::fs::create_dir_all(&shared).unwrap();
    let toml = std::fs::read_to_string(dir.join("machine.toml")).unwrap();
    std::fs::write(
        dir.join("machine.toml"),
        toml.replace(
            "mounts = []",
            &format!("mounts = [{{ path = {:?} }}]", shared),
        ),
    )
    .unwrap();
    let t = Instant::now();
    let out = rmachine_all(&env, &["start", M]);
    eprintln!(
        "cold start after a damaged state: {:?}: {}",
        t.elapsed(),
        out.trim()
    );
    assert!(
        out.contains("booted cold") && out.contains("truncated"),
        "{out}"
    );
    let state = inspect_state(&env);
    assert_eq!(state["start_kind"], "boot", "{state}");
    assert!(
        state["cold_boot_reason"]
            .as_str()
            .unwrap_or("")
            .contains("truncated"),
        "{state}"
    );
    assert_eq!(
        saved_files(&dir),
        (false, false),
        "the refused state is discarded"
    );
    assert_eq!(
        env.docker_ok(&[
            "run",
            "--rm",
            "-v",
            "keep:/data",
            "e2e/busybox:1",
            "cat",
            "/data/f"
        ])
        .trim(),
        "written-before-the-save"
    );
    let web = env.docker_ok(&["inspect", "-f", "{{.State.Running}}", "web"]);
    assert_eq!(
        web.trim(),
        "false",
        "a cold boot ends the running processes"
    );

    // A machine with a shared folder: this QEMU cannot save it, and the stop says why
    // (and what would lift it) in one line; nothing is saved, so the next start boots
    // cold.
    let out = env.rmachine_ok(&["stop", M]);
    eprintln!("stop with a shared folder: {}", out.trim());
    let line = out.lines().last().unwrap_or("");
    assert!(line.contains("not saved"), "{out}");
    assert!(
        line.contains("shared folders") && line.contains("vhost-user-fs"),
        "{out}"
    );
    assert!(
        line.contains("newer QEMU") && line.contains("virtiofsd"),
        "{out}"
    );
    assert_eq!(saved_files(&dir), (false, false));
    let status = env.rmachine_ok(&["status", M]);
    assert!(status.contains("last stop: not saved (QEMU"), "{status}");

    // `rmachine rm` removes a saved state with the machine.
    std::fs::copy(kept.join("saved.json"), dir.join("saved.json")).unwrap();
    env.rmachine_ok(&["rm", M]);
    assert!(
        !dir.exists(),
        "the machine folder and its saved state are gone"
    );
    eprintln!("test wall time: {:?}", began.elapsed());
}
