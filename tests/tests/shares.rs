//! Host folders in containers (virtio-fs) end to end, on a real VM: a folder shared with
//! the machine appears in the guest at the same path, so `docker run -v "$PWD":/src`
//! works as on Linux, both ways, at once; a missing share is a clear error at start, a
//! bind mount outside every share is refused by the host agent's proxy.

use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

use rmachine_e2e::*;

const M: &str = "fs";
const IMG: &str = "e2e/busybox:1";

#[test]
fn test_shared_folders_both_ways() {
    let env = MachineEnv::new();
    let share = env.dir.path().join("share");
    let ro_share = env.dir.path().join("ro");
    std::fs::create_dir_all(&share).unwrap();
    std::fs::create_dir_all(&ro_share).unwrap();
    std::fs::write(ro_share.join("r.txt"), "read only\n").unwrap();
    let share_s = share.to_str().unwrap().to_string();
    let ro_s = ro_share.to_str().unwrap().to_string();

    // A share that does not exist: a clear error at start, before any VM runs.
    env.rmachine_ok(&[
        "create",
        "missing",
        "--driver",
        "qemu",
        "--mount",
        "/nonexistent/rmachine-share",
    ]);
    let err = env.rmachine_err(&["start", "missing", "--no-use"]);
    assert!(
        err.contains("/nonexistent/rmachine-share") && err.contains("does not exist"),
        "{err}"
    );
    env.rmachine_ok(&["rm", "missing"]);

    env.rmachine_ok(&[
        "create",
        M,
        "--driver",
        "qemu",
        "--disk",
        "8G",
        "--mount",
        &share_s,
        "--mount",
        &format!("{ro_s}:ro"),
    ]);
    env.rmachine_ok(&["start", M]);
    let work = env.dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    env.docker_ok(&["import", busybox_tarball(&work).to_str().unwrap(), IMG]);
    let bind = format!("{share_s}:/src");
    let run = |script: &str| env.docker_ok(&["run", "--rm", "-v", &bind, IMG, "sh", "-c", script]);

    // Host write → container read.
    std::fs::write(share.join("from-host.txt"), "written on the host\n").unwrap();
    assert_eq!(run("cat /src/from-host.txt"), "written on the host\n");

    // Container write → host read, owned by the user.
    run("echo written in a container > /src/from-container.txt");
    let path = share.join("from-container.txt");
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        "written in a container\n"
    );
    let me = std::fs::metadata(env.dir.path()).unwrap().uid();
    assert_eq!(
        std::fs::metadata(&path).unwrap().uid(),
        me,
        "file not owned by the user"
    );

    // Host edits are visible at once (no cache to expire).
    for round in 0..3 {
        std::fs::write(share.join("edit.txt"), format!("version {round}\n")).unwrap();
        assert_eq!(run("cat /src/edit.txt"), format!("version {round}\n"));
    }

    // Rename and delete, both ways.
    std::fs::rename(
        share.join("from-host.txt"),
        share.join("renamed-on-host.txt"),
    )
    .unwrap();
    assert_eq!(
        run("ls /src/from-host.txt 2>/dev/null; cat /src/renamed-on-host.txt"),
        "written on the host\n"
    );
    run("mv /src/from-container.txt /src/renamed-in-container.txt && rm /src/renamed-on-host.txt");
    assert!(share.join("renamed-in-container.txt").exists());
    assert!(
        !share.join("from-container.txt").exists() && !share.join("renamed-on-host.txt").exists()
    );
    std::fs::remove_file(share.join("renamed-in-container.txt")).unwrap();
    assert_eq!(
        run("ls /src/renamed-in-container.txt 2>&1 >/dev/null | wc -l"),
        "1\n"
    );

    // A 10,000-file tree: the same count on both sides.
    let tree = share.join("tree");
    for d in 0..10 {
        let dir = tree.join(format!("d{d}"));
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..1000 {
            std::fs::write(dir.join(format!("f{f}.txt")), "x").unwrap();
        }
    }
    let t = Instant::now();
    let guest_count = run("find /src/tree -type f | wc -l");
    eprintln!("find over 10,000 files in the container: {:?}", t.elapsed());
    assert_eq!(guest_count.trim(), "10000");
    let host_count = walk_count(&tree);
    assert_eq!(host_count, 10000);

    // A read-only share: readable, not writable.
    let ro_bind = format!("{ro_s}:/ro");
    assert_eq!(
        env.docker_ok(&["run", "--rm", "-v", &ro_bind, IMG, "cat", "/ro/r.txt"]),
        "read only\n"
    );
    let out = env.docker(
        &[
            "run",
            "--rm",
            "-v",
            &ro_bind,
            IMG,
            "sh",
            "-c",
            "echo x > /ro/w.txt",
        ],
        None,
        &[],
    );
    assert!(
        !out.status.success(),
        "write into a read-only share succeeded"
    );
    assert!(!ro_share.join("w.txt").exists());

    // A bind mount outside every share: the proxy's clear error, not an empty folder.
    let outside = env.dir.path().join("not-shared");
    std::fs::create_dir_all(&outside).unwrap();
    let out = env.docker(
        &[
            "run",
            "--rm",
            "-v",
            &format!("{}:/x", outside.display()),
            IMG,
            "true",
        ],
        None,
        &[],
    );
    assert!(
        !out.status.success(),
        "a bind outside the shares was accepted"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not shared"), "{stderr}");

    // Inotify in a container for host-side edits: virtio-fs cannot tell the guest, so the
    // host agent watches what running containers bind and the guest agent replays the
    // changes; the container's watcher must hear of a file created and then edited on the
    // host (as attribute, open and close-after-write events, see guest/agent/src/notify.rs),
    // once per edit (a replay must not echo back and forth).
    let watch = share.join("watch");
    std::fs::create_dir_all(&watch).unwrap();
    let watch_img = inotify_image(&env, &work);
    // The host agent logs each folder it starts watching; the container's start is seen
    // once one more such line names the share (the earlier containers' --rm ends came
    // before it in the engine's event stream).
    let watched_line = format!("path={share_s}");
    let watch_lines = || {
        env.hostagent_log(M)
            .lines()
            .filter(|l| {
                l.contains("watching for host changes")
                    && !l.contains("no longer")
                    && l.contains(&watched_line)
            })
            .count()
    };
    let watched_before = watch_lines();
    let watcher = env.docker_ok(&[
        "run",
        "-d",
        "-v",
        &bind,
        &watch_img,
        "inotify-watch",
        "/src/watch",
    ]);
    let watcher = watcher.trim();
    let t = Instant::now();
    while watch_lines() <= watched_before {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "the host agent never watched {share_s}:\n{}",
            env.hostagent_log(M)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    for (round, name) in ["created-on-host.txt", "created-on-host.txt"]
        .iter()
        .enumerate()
    {
        // Let the previous round's events all arrive first.
        std::thread::sleep(Duration::from_millis(1000));
        let before = env
            .docker_ok(&["logs", watcher])
            .lines()
            .filter(|l| l.ends_with(name))
            .count();
        let t = Instant::now();
        std::fs::write(watch.join(name), format!("edit {round}")).unwrap();
        let seen = loop {
            let logs = env.docker_ok(&["logs", watcher]);
            let lines: Vec<&str> = logs.lines().filter(|l| l.ends_with(name)).collect();
            if lines.len() > before {
                break lines[before..].join(" | ");
            }
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "no inotify event in the container for a host edit of {name} after 30 s; its events:\n{logs}"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        eprintln!(
            "host edit {round} of {name}: first event in the container after {:?}: {seen}",
            t.elapsed()
        );
    }
    // No echo: once the replays are done, the events stop.
    let count = || {
        env.docker_ok(&["logs", watcher])
            .lines()
            .filter(|l| l.contains("created-on-host"))
            .count()
    };
    std::thread::sleep(Duration::from_secs(1));
    let settled = count();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(count(), settled, "events kept coming after two host edits");
    env.docker_ok(&["rm", "-f", watcher]);

    // The host agent supervises the shares' servers: a virtiofsd that dies leaves the
    // machine running and `rmachine status` saying which folder is gone and what to do.
    let pattern = format!("--shared-dir {ro_s}");
    let killed = std::process::Command::new("pkill")
        .args(["-f", "--", &pattern])
        .status()
        .unwrap();
    assert!(killed.success(), "no virtiofsd serving {ro_s} to kill");
    let t = Instant::now();
    loop {
        let status = env.rmachine_ok(&["status", M]);
        if status.contains(&format!(
            "warning: shared folder {ro_s} is no longer available"
        )) {
            assert!(status.contains("rmachine restart fs"), "{status}");
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "no warning after virtiofsd died:\n{status}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        run("cat /src/edit.txt"),
        "version 2\n",
        "the other share still works"
    );

    env.rmachine_ok(&["stop", M]);
}

/// The busybox test image plus `inotify-watch` (tests/tools/inotify-watch.c, built static:
/// Debian's busybox has no inotifyd).
fn inotify_image(env: &MachineEnv, work: &std::path::Path) -> String {
    let ctx = work.join("inotify-image");
    std::fs::create_dir_all(&ctx).unwrap();
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/inotify-watch.c");
    let out = std::process::Command::new("gcc")
        .args(["-static", "-O2", "-Wall", "-Werror", "-o"])
        .arg(ctx.join("inotify-watch"))
        .arg(&src)
        .output()
        .expect("gcc runs (Debian package gcc; libc6-dev for the static libc)");
    assert!(
        out.status.success(),
        "building inotify-watch: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(
        ctx.join("Dockerfile"),
        format!("FROM {IMG}\nCOPY inotify-watch /bin/inotify-watch\n"),
    )
    .unwrap();
    let tag = "e2e/inotify:1".to_string();
    env.docker_ok(&["build", "-q", "-t", &tag, ctx.to_str().unwrap()]);
    tag
}

fn walk_count(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| {
            if e.path().is_dir() {
                walk_count(&e.path())
            } else {
                1
            }
        })
        .sum()
}
