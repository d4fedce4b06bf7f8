//! Nothing stranded, nothing lost: a machine (qemu driver, a shared folder) whose
//! container writes to a volume, streams its log and serves a published port, while its
//! processes are killed one at a time — the host agent, QEMU, virtiofsd, and dockerd and
//! containerd inside the guest — and its host "reboots" (everything killed, stale
//! sockets and pid files left). For each: what `rmachine status` says, what brings the
//! machine back, that the volume's completed writes and the container list are intact,
//! that the port serves again, and that no process of the machine is left over.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rmachine_e2e::*;

const M: &str = "crash";
const IMG: &str = "e2e/busybox:1";

/// Every live process whose command line names `dir` (the machine's folder): the host
/// agent runs as `rmachine hostagent NAME` with RMACHINE_HOME, its VM and helpers name
/// files in the folder.
fn processes_naming(dir: &Path) -> BTreeSet<(u32, String)> {
    processes_naming_with_parents(dir)
        .into_iter()
        .map(|(pid, _, cmd)| (pid, cmd))
        .collect()
}

/// The same, with each one's parent PID.
fn processes_naming_with_parents(dir: &Path) -> BTreeSet<(u32, u32, String)> {
    let needle = dir.to_string_lossy().into_owned();
    let mut found = BTreeSet::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        // After the command's name: state, parent PID, … A state of Z is gone already.
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let mut fields = stat.rsplit(')').next().unwrap_or("").split_whitespace();
        let zombie = fields.next().is_none_or(|state| state == "Z");
        let ppid = fields.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        if text.contains(&needle) && !zombie && pid != std::process::id() {
            found.insert((pid, ppid, text));
        }
    }
    found
}

fn kill9(pid: u64) {
    let status = Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -9 {pid}");
}

struct Crash {
    env: MachineEnv,
    dir: std::path::PathBuf,
    port: u16,
}

impl Crash {
    fn state(&self) -> serde_json::Value {
        self.env.state(M)
    }

    fn pid(&self, pointer: &str) -> u64 {
        self.state()
            .pointer(pointer)
            .and_then(|v| v.as_u64())
            .unwrap_or_else(|| panic!("{pointer} not in state.json: {}", self.state()))
    }

    /// The helper daemon serving `what`, from state.json.
    fn helper(&self, what: &str) -> u64 {
        let state = self.state();
        state["helpers"]
            .as_array()
            .and_then(|h| {
                h.iter()
                    .find(|h| h["serves"].as_str().unwrap_or("").contains(what))
            })
            .and_then(|h| h["id"]["pid"].as_u64())
            .unwrap_or_else(|| panic!("no helper for {what}: {state}"))
    }

    fn status(&self) -> String {
        self.env.rmachine_ok(&["status", M])
    }

    /// Lines the container has written to its volume (the count of completed writes).
    fn volume_lines(&self) -> usize {
        let out = self.env.docker(
            &[
                "run",
                "--rm",
                "-v",
                "crashvol:/data",
                IMG,
                "wc",
                "-l",
                "/data/log",
            ],
            None,
            &[],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }

    fn wait_port(&self) {
        wait_until(
            "the published port serves",
            Duration::from_secs(60),
            || match http_get(self.port, "/") {
                Ok(body) if body == "hello\n" => Ok(()),
                Ok(body) => Err(format!("body {body:?}")),
                Err(e) => Err(e),
            },
        );
    }

    fn wait_running_app(&self) {
        wait_until("the container runs", Duration::from_secs(120), || {
            let out = self.env.docker(
                &["inspect", "-f", "{{.State.Running}} {{json .State}}", "app"],
                None,
                &[],
            );
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            if text.starts_with("true") {
                return Ok(());
            }
            let logs = self.env.docker(&["logs", "--tail", "5", "app"], None, &[]);
            Err(format!(
                "{text} {} logs: {} {}",
                String::from_utf8_lossy(&out.stderr),
                String::from_utf8_lossy(&logs.stdout),
                String::from_utf8_lossy(&logs.stderr)
            ))
        });
    }

    fn started_at(&self) -> String {
        self.env
            .docker_ok(&["inspect", "-f", "{{.State.StartedAt}}", "app"])
            .trim()
            .to_string()
    }

    /// `docker logs -f app`, in the background.
    fn follow_logs(&self) -> Child {
        Command::new("docker")
            .env("DOCKER_CONFIG", &self.env.docker_config)
            .env_remove("DOCKER_HOST")
            .env_remove("DOCKER_CONTEXT")
            .args(["logs", "-f", "app"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    }

    fn assert_only_expected_processes(&self, when: &str) {
        // The VM and one virtiofsd (with the child it sandboxes itself in), started by
        // the live host agent: nothing more.
        let (hostagent, vm, fs) = (
            self.pid("/hostagent/pid"),
            self.pid("/vm/pid"),
            self.helper("shared folder"),
        );
        assert!(
            Path::new(&format!("/proc/{hostagent}")).exists(),
            "{when}: the host agent {hostagent} is gone"
        );
        let found = processes_naming_with_parents(&self.dir);
        let unexpected: Vec<_> = found
            .iter()
            .filter(|(pid, ppid, _)| {
                let (pid, ppid) = (u64::from(*pid), u64::from(*ppid));
                pid != vm && pid != fs && ppid != fs
            })
            .collect();
        assert!(
            unexpected.is_empty(),
            "{when}: unexpected processes: {unexpected:#?}"
        );
        let pids: BTreeSet<u64> = found.iter().map(|(p, _, _)| u64::from(*p)).collect();
        assert!(
            pids.contains(&vm) && pids.contains(&fs),
            "{when}: VM {vm} or virtiofsd {fs} missing: {found:#?}"
        );
    }
}

#[test]
fn test_crash_matrix_loses_nothing() {
    let env = MachineEnv::new();
    let share = env.dir.path().join("share");
    std::fs::create_dir_all(&share).unwrap();
    std::fs::write(share.join("in.txt"), "from the host\n").unwrap();
    let share_s = share.to_str().unwrap().to_string();
    env.rmachine_ok(&[
        "create", M, "--driver", "qemu", "--disk", "8G", "--mount", &share_s,
    ]);
    env.rmachine_ok(&["start", M]);
    let dir = env.home.join("machines").join(M);
    let work = env.dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    env.docker_ok(&["import", busybox_tarball(&work).to_str().unwrap(), IMG]);
    let port = free_local_port();
    let c = Crash { env, dir, port };

    // The container: appends a line to its volume every 0.3 s (each one synced: a
    // completed write), logs it, and serves a page on a published port.
    let script = "mkdir -p /www && echo hello > /www/index.html && httpd -p 8080 -h /www && \
                  i=0; while :; do i=$((i+1)); echo $i >> /data/log; sync; echo line $i; sleep 0.3; done";
    c.env.docker_ok(&[
        "run",
        "-d",
        "--name",
        "app",
        // `always`: Docker restarts it when its engine comes back from a crash
        // (`unless-stopped` counts the engine's own kill at its restart as a stop).
        "--restart",
        "always",
        "-v",
        "crashvol:/data",
        "-v",
        &format!("{share_s}:/share"),
        "-p",
        &format!("127.0.0.1:{port}:8080"),
        IMG,
        "sh",
        "-c",
        script,
    ]);
    c.wait_port();
    c.assert_only_expected_processes("running");

    eprintln!("crash matrix: step 1");
    // 1. The host agent is killed. The VM and its helpers run on; the docker CLI's
    // stream ends (it does not hang); status says what happened and what to do.
    let mut logs = c.follow_logs();
    std::thread::sleep(Duration::from_secs(1));
    let (vm_pid, fs_pid) = (c.pid("/vm/pid"), c.helper("shared folder"));
    let started_at = c.started_at();
    let lines_before = c.volume_lines();
    kill9(c.pid("/hostagent/pid"));
    wait_until(
        "docker logs -f ends",
        Duration::from_secs(30),
        || match logs.try_wait().unwrap() {
            Some(_) => Ok(()),
            None => Err("still following".into()),
        },
    );
    let status = c.status();
    assert!(
        status.contains("error")
            && status.contains("VM still runs")
            && status.contains("rmachine start"),
        "{status}"
    );
    // `start` takes the running VM over: the same VM and virtiofsd, the container never
    // restarted, its port served again, its writes went on.
    let took_over = Instant::now();
    c.env.rmachine_ok(&["start", M]);
    eprintln!("take-over: {:?}", took_over.elapsed());
    assert_eq!(
        (c.pid("/vm/pid"), c.helper("shared folder")),
        (vm_pid, fs_pid)
    );
    assert_eq!(c.started_at(), started_at, "the container was restarted");
    c.wait_port();
    assert!(c.volume_lines() > lines_before);
    c.assert_only_expected_processes("after the take-over");
    assert_eq!(
        c.env
            .docker_ok(&["exec", "app", "cat", "/share/in.txt"])
            .trim(),
        "from the host"
    );

    eprintln!("crash matrix: step 2");
    // 2. QEMU is killed: the error state; its virtiofsd goes with it; start boots again
    // with the container list and the volume's completed writes intact.
    let lines_before = c.volume_lines();
    kill9(c.pid("/vm/pid"));
    wait_until("the error state", Duration::from_secs(30), || {
        let m = c.env.listed(M);
        (m["state"] == "error").then_some(()).ok_or(m.to_string())
    });
    assert!(c.status().contains("exited unexpectedly"));
    wait_until(
        "no process of the machine left",
        Duration::from_secs(30),
        || {
            let left = processes_naming(&c.dir);
            left.is_empty().then_some(()).ok_or(format!("{left:?}"))
        },
    );
    c.env.rmachine_ok(&["start", M]);
    c.wait_running_app();
    assert!(c.volume_lines() >= lines_before, "completed writes lost");
    c.wait_port();
    c.assert_only_expected_processes("after booting again");

    eprintln!("crash matrix: step 3");
    // 3. virtiofsd is killed: the machine runs on, and says the share is gone and how to
    // get it back; restart brings it.
    kill9(c.helper("shared folder"));
    wait_until("the share's warning", Duration::from_secs(30), || {
        let s = c.status();
        (s.contains("warning") && s.contains(&share_s) && s.contains("rmachine restart"))
            .then_some(())
            .ok_or(s)
    });
    c.env.rmachine_ok(&["restart", M]);
    c.wait_running_app();
    assert_eq!(
        c.env
            .docker_ok(&["exec", "app", "cat", "/share/in.txt"])
            .trim(),
        "from the host"
    );
    assert!(!c.status().contains("warning"));

    eprintln!("crash matrix: step 4");
    // 4. dockerd, then containerd, killed inside the guest: the agent's supervision starts
    // them again (nothing to do on the host); containers and volume intact.
    for daemon in ["dockerd", "containerd"] {
        let lines_before = c.volume_lines();
        c.env
            .rmachine_ok(&["shell", M, "--", "pkill", "-9", "-x", daemon]);
        wait_until(
            &format!("the engine back after {daemon}"),
            Duration::from_secs(120),
            || {
                // The engine answers and can run a container (containerd is back too).
                let out = c.env.docker(&["run", "--rm", IMG, "true"], None, &[]);
                out.status
                    .success()
                    .then_some(())
                    .ok_or(String::from_utf8_lossy(&out.stderr).into_owned())
            },
        );
        c.wait_running_app();
        assert!(
            c.volume_lines() >= lines_before,
            "{daemon}: completed writes lost"
        );
        c.wait_port();
        assert_eq!(c.env.listed(M)["state"], "running");
    }

    eprintln!("crash matrix: step 5");
    // 5. `rmachine stop` after the host agent died: the VM is shut down cleanly through
    // its guest link (the engine stops first: the data is synced), nothing is left.
    let lines_before = c.volume_lines();
    kill9(c.pid("/hostagent/pid"));
    c.env.rmachine_ok(&["stop", M]);
    assert_eq!(c.env.listed(M)["state"], "stopped");
    // The console is bytes (a serial line may start with 0xff).
    let console =
        String::from_utf8_lossy(&std::fs::read(c.dir.join("console.log")).unwrap_or_default())
            .into_owned();
    assert!(
        console.contains("shutting down") && console.contains("resetting the machine"),
        "no clean shutdown on the console: {console}"
    );
    let left = processes_naming(&c.dir);
    assert!(left.is_empty(), "left running: {left:?}");
    c.env.rmachine_ok(&["start", M]);
    c.wait_running_app();
    assert!(c.volume_lines() >= lines_before);

    eprintln!("crash matrix: step 6");
    // 6. A host reboot: every process gone at once, their sockets, pid files and a
    // `running` state.json left behind. Status says so; start boots cleanly.
    for pid in [
        c.pid("/hostagent/pid"),
        c.pid("/vm/pid"),
        c.helper("shared folder"),
    ] {
        kill9(pid);
    }
    wait_until("everything gone", Duration::from_secs(30), || {
        let left = processes_naming(&c.dir);
        left.is_empty().then_some(()).ok_or(format!("{left:?}"))
    });
    assert!(c.dir.join("docker.sock").exists() && c.dir.join("hostagent.sock").exists());
    assert_eq!(c.env.listed(M)["state"], "error");
    c.env.rmachine_ok(&["start", M]);
    c.wait_running_app();
    c.wait_port();
    c.assert_only_expected_processes("after the host's reboot");

    eprintln!("crash matrix: step 7");
    // 7. stop --force always stops, and leaves nothing.
    c.env.rmachine_ok(&["stop", "--force", M]);
    assert_eq!(c.env.listed(M)["state"], "stopped");
    let left = processes_naming(&c.dir);
    assert!(left.is_empty(), "left running after stop --force: {left:?}");
    let _ = logs.wait();
}
