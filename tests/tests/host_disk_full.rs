//! The host disk full while the guest writes (qemu driver): the machine's folder sits on
//! a small tmpfs that a ballast file fills while a container writes 1 MiB chunks to a
//! volume, each synced and its checksum recorded. The VM pauses instead of failing the
//! guest's writes; `rmachine status` and `ls` say `paused`, naming the full file and how
//! the machine resumes; once the ballast is gone the machine continues by itself, the
//! container finishes and every recorded chunk reads back with its checksum. Filled
//! again, the paused machine is stopped: at once, nothing left running, and the next boot
//! still verifies every recorded chunk. After a clean stop `e2fsck -fn` finds the data
//! disk's filesystem clean.
//!
//! Mounting the tmpfs needs root (CAP_SYS_ADMIN): without it the test says why and
//! skips, or fails when `REQUIRE_ROOT=1` (CI sets it). The mount is undone in every path
//! (its guard stops the machine first, also when the test panics).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use rmachine_e2e::*;

const M: &str = "full";
const IMG: &str = "e2e/busybox:1";
/// The tmpfs holding the machines' folder: the data disk after the first boot and the
/// image import takes under 10 MiB of it (sparse).
const TMPFS_MIB: u64 = 128;
/// Free space left on the tmpfs when the container starts writing.
const HEADROOM_MIB: u64 = 24;
/// What the container writes: more than the headroom, in 1 MiB chunks.
const CHUNKS: u32 = 64;

/// The machines' folder on a tmpfs; dropping it stops every machine of the env (so no
/// process holds the mount) and unmounts it.
struct OnTmpfs {
    env: MachineEnv,
    mount: PathBuf,
}

impl OnTmpfs {
    /// `None` (after saying why) when this process cannot mount; panics instead when
    /// `REQUIRE_ROOT=1`.
    fn new(size_mib: u64) -> Option<OnTmpfs> {
        let env = MachineEnv::new();
        let mount = env.home.join("machines");
        std::fs::create_dir_all(&mount).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mib}m,mode=0700")])
            .arg("rmachine-e2e-full")
            .arg(&mount)
            .output()
            .expect("run mount");
        if !out.status.success() {
            let why = format!(
                "cannot mount a tmpfs on {} (needs root): {}",
                mount.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
            if std::env::var("REQUIRE_ROOT").as_deref() == Ok("1") {
                panic!("REQUIRE_ROOT=1 but {why}");
            }
            eprintln!("skipped: {why}");
            return None;
        }
        Some(OnTmpfs { env, mount })
    }
}

impl Drop for OnTmpfs {
    fn drop(&mut self) {
        let _ = self.env.rmachine(&["stop", "--force", M]);
        // The machine's processes may take a moment to be gone after the stop.
        for _ in 0..20 {
            let umount = Command::new("umount")
                .arg(&self.mount)
                .stderr(std::process::Stdio::null())
                .status();
            if umount.is_ok_and(|s| s.success()) {
                return;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        // Something still holds it: say what, and detach it now (freed when it goes).
        eprintln!(
            "{} still in use after 10 s by: {:?}; detaching it",
            self.mount.display(),
            holders(&self.mount)
        );
        let _ = Command::new("umount").arg("-l").arg(&self.mount).status();
    }
}

/// The processes with a file or folder open under `dir`.
fn holders(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let pid = entry.file_name().to_string_lossy().into_owned();
        if pid.parse::<u32>().is_err() {
            continue;
        }
        let links = std::fs::read_dir(entry.path().join("fd"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|fd| fd.path())
            .chain([entry.path().join("cwd")]);
        for link in links {
            if std::fs::read_link(&link).is_ok_and(|target| target.starts_with(dir)) {
                let cmd = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
                found.push(format!(
                    "{pid} {}",
                    String::from_utf8_lossy(&cmd).replace('\0', " ")
                ));
                break;
            }
        }
    }
    found
}

/// Bytes free on the filesystem holding `path` (root's view: `df`'s with reserved blocks).
fn free_bytes(path: &Path) -> u64 {
    let out = Command::new("stat")
        .args(["-f", "-c", "%f %S"])
        .arg(path)
        .output()
        .expect("run stat");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut fields = text.split_whitespace().map(|f| f.parse::<u64>().unwrap());
    fields.next().unwrap() * fields.next().unwrap()
}

/// Writes `mib` MiB of zeros to `path` (on tmpfs each page is allocated).
fn ballast(path: &Path, mib: u64) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0u8; 1 << 20];
    for _ in 0..mib {
        f.write_all(&chunk).unwrap();
    }
    f.sync_all().unwrap();
}

#[test]
fn test_host_disk_full_pauses_and_resumes_losing_nothing() {
    let Some(t) = OnTmpfs::new(TMPFS_MIB) else {
        return;
    };
    let started = Instant::now();
    let env = &t.env;
    env.rmachine_ok(&["create", M, "--driver", "qemu", "--disk", "4G"]);
    env.rmachine_ok(&["start", M]);
    let work = env.dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    env.docker_ok(&["import", busybox_tarball(&work).to_str().unwrap(), IMG]);
    env.docker_ok(&["volume", "create", "fillvol"]);
    let data_disk = t.mount.join(M).join("data.img");
    eprintln!(
        "booted in {:?}; the data disk holds {} MiB of the tmpfs",
        started.elapsed(),
        (TMPFS_MIB << 20).saturating_sub(free_bytes(&t.mount)) >> 20
    );

    // The host disk fills up: all but HEADROOM_MIB taken by a ballast file.
    let free_mib = free_bytes(&t.mount) >> 20;
    assert!(
        free_mib > HEADROOM_MIB + 16,
        "the tmpfs is too small: {free_mib} MiB free after the boot"
    );
    let ballast_path = t.mount.join("ballast");
    ballast(&ballast_path, free_mib - HEADROOM_MIB);

    // The container writes CHUNKS MiB: each chunk synced, then its checksum recorded and
    // synced (a recorded chunk is a completed write).
    let script = format!(
        "i=0; while [ $i -lt {CHUNKS} ]; do i=$((i+1)); \
         head -c 1048576 /dev/urandom > /data/c$i && sync && \
         (cd /data && md5sum c$i >> sums) && sync || exit 1; done; \
         echo done > /data/finished; sync"
    );
    env.docker_ok(&[
        "run",
        "-d",
        "--name",
        "writer",
        "-v",
        "fillvol:/data",
        IMG,
        "sh",
        "-c",
        &script,
    ]);

    // The VM pauses; status names the full file and the way out.
    let mut status = String::new();
    wait_until("the paused state", Duration::from_secs(180), || {
        status = env.rmachine_ok(&["status", M]);
        status
            .contains("machine full: paused")
            .then_some(())
            .ok_or(status.clone())
    });
    eprintln!("paused after {:?}:\n{status}", started.elapsed());
    assert!(
        status.contains(&format!(
            "host disk holding {} is full",
            data_disk.display()
        )) && status.contains("continues by itself once 64 MiB are free"),
        "{status}"
    );
    let listed = env.listed(M);
    assert_eq!(listed["state"], "paused", "{listed}");
    assert!(
        listed["error"].as_str().unwrap_or("").contains("is full"),
        "{listed}"
    );
    // It stays paused while the disk is full (the host agent looks every 2 s).
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(env.listed(M)["state"], "paused");
    let vm = env.state(M)["vm"]["pid"].as_u64().expect("the VM's pid");
    assert!(Path::new(&format!("/proc/{vm}")).exists(), "QEMU exited");
    // `rmachine start` says why it cannot do more.
    let err = env.rmachine_err(&["start", M]);
    assert!(err.contains("paused") && err.contains("is full"), "{err}");
    // The docker CLI is answered with the reason instead of waiting on the paused VM.
    let out = env.docker(&["ps"], None, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "docker ps while paused: {err}");
    assert!(
        err.contains(&format!("machine \"{M}\"")) && err.contains("is full"),
        "{err}"
    );

    // Space is freed: the machine continues by itself, the container finishes.
    std::fs::remove_file(&ballast_path).unwrap();
    let freed = Instant::now();
    wait_until(
        "running again after space was freed",
        Duration::from_secs(60),
        || {
            let m = env.listed(M);
            (m["state"] == "running").then_some(()).ok_or(m.to_string())
        },
    );
    eprintln!("running again {:?} after the ballast went", freed.elapsed());
    assert!(
        env.hostagent_log(M).contains("continuing the VM"),
        "{}",
        env.hostagent_log(M)
    );
    wait_until("the writer's end", Duration::from_secs(300), || {
        let s = env.docker_ok(&[
            "inspect",
            "-f",
            "{{.State.Status}} {{.State.ExitCode}}",
            "writer",
        ]);
        (s.trim() == "exited 0").then_some(()).ok_or(s)
    });

    // Every chunk written, every recorded checksum right.
    let check = env.docker_ok(&[
        "run",
        "--rm",
        "-v",
        "fillvol:/data",
        IMG,
        "sh",
        "-c",
        "cd /data && cat finished && wc -l < sums && md5sum -c sums | grep -c ': OK$'",
    ]);
    let lines: Vec<&str> = check.split_whitespace().collect();
    assert_eq!(
        lines,
        ["done", &CHUNKS.to_string(), &CHUNKS.to_string()],
        "{check}"
    );

    // Full again, and this time stopped while paused: the VM is killed at once (a paused
    // guest cannot shut down), nothing is left running, and the next boot finds every
    // write that completed before (the ones that waited are lost, never half-made).
    let free_mib = free_bytes(&t.mount) >> 20;
    ballast(&ballast_path, free_mib.saturating_sub(HEADROOM_MIB));
    env.docker_ok(&[
        "run",
        "-d",
        "--name",
        "writer2",
        "-v",
        "fillvol:/data",
        IMG,
        "sh",
        "-c",
        &script
            .replace("/data/c$i", "/data/d$i")
            .replace("md5sum c$i", "md5sum d$i"),
    ]);
    wait_until("paused again", Duration::from_secs(180), || {
        let m = env.listed(M);
        (m["state"] == "paused").then_some(()).ok_or(m.to_string())
    });
    let stopping = Instant::now();
    env.rmachine_ok(&["stop", M]);
    eprintln!("stopped while paused in {:?}", stopping.elapsed());
    assert!(
        stopping.elapsed() < Duration::from_secs(30),
        "stop of a paused machine took {:?}",
        stopping.elapsed()
    );
    assert_eq!(env.listed(M)["state"], "stopped");
    assert!(
        env.hostagent_log(M)
            .contains("stop asked while the VM is paused"),
        "{}",
        env.hostagent_log(M)
    );
    wait_until(
        "no process holding the machine's folder",
        Duration::from_secs(15),
        || {
            let left = holders(&t.mount);
            left.is_empty().then_some(()).ok_or(format!("{left:?}"))
        },
    );
    std::fs::remove_file(&ballast_path).unwrap();
    env.rmachine_ok(&["start", M]);
    let check = env.docker_ok(&[
        "run",
        "--rm",
        "-v",
        "fillvol:/data",
        IMG,
        "sh",
        "-c",
        "cd /data && wc -l < sums && md5sum -c sums | grep -c ': OK$'",
    ]);
    let lines: Vec<&str> = check.split_whitespace().collect();
    assert!(
        lines.len() == 2 && lines[0] == lines[1] && lines[0].parse::<u32>().unwrap() > CHUNKS,
        "every recorded chunk (the first writer's {CHUNKS} and the second's before the stop) verifies: {check}"
    );

    // A clean stop, then the data disk's filesystem checked: clean.
    env.rmachine_ok(&["stop", M]);
    assert_eq!(env.listed(M)["state"], "stopped");
    let fsck = Command::new("e2fsck")
        .arg("-fn")
        .arg(&data_disk)
        .output()
        .expect("run e2fsck (e2fsprogs)");
    assert!(
        fsck.status.success(),
        "e2fsck -fn {}: {}\n{}",
        data_disk.display(),
        String::from_utf8_lossy(&fsck.stdout),
        String::from_utf8_lossy(&fsck.stderr)
    );
    // Nothing of the machine is left holding its folder.
    wait_until(
        "no process holding the machine's folder",
        Duration::from_secs(15),
        || {
            let left = holders(&t.mount);
            left.is_empty().then_some(()).ok_or(format!("{left:?}"))
        },
    );
    eprintln!("test body took {:?}", started.elapsed());
}
