//! `rmachine shell` and `rmachine cp` end to end, on a real VM (the `qemu` driver): a
//! command runs in the guest through the agent's exec service with its output, stdin
//! and exit code; a folder goes into the guest and comes back identical; a machine that
//! is not running is a clear error.

use std::path::Path;
use std::process::Stdio;

use rmachine_e2e::*;

const M: &str = "sh";

/// Every file under `root` as (relative path, contents), sorted.
fn files(root: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let rel = path
                    .strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                out.push((rel, std::fs::read(&path).unwrap()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn test_shell_and_cp_through_the_agent() {
    let env = MachineEnv::new();

    // Before the machine runs: a clear error, no hang.
    env.rmachine_ok(&["create", M, "--driver", "qemu", "--disk", "8G"]);
    let err = env.rmachine_err(&["shell", M, "--", "true"]);
    assert!(
        err.contains(&format!("machine {M} is not running")),
        "{err}"
    );
    let host = env.dir.path().join("host");
    std::fs::create_dir_all(&host).unwrap();
    let err = env.rmachine_err(&["cp", host.to_str().unwrap(), &format!("{M}:/tmp/x")]);
    assert!(
        err.contains(&format!("machine {M} is not running")),
        "{err}"
    );
    assert!(env
        .rmachine_err(&["shell", "nope"])
        .contains("no machine named \"nope\""));

    env.rmachine_ok(&["start", M, "--no-use"]);

    // A command: its output, stderr apart, and its exit code.
    let os = env.rmachine_ok(&["shell", M, "--", "cat", "/etc/os-release"]);
    assert!(os.contains("trixie"), "{os}");
    let out = env.rmachine(&[
        "shell",
        M,
        "--",
        "sh",
        "-c",
        "echo to-out; echo to-err >&2; exit 7",
    ]);
    assert_eq!(out.status.code(), Some(7), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "to-out\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "to-err\n");
    let whoami = env.rmachine_ok(&["shell", M, "--", "sh", "-c", "id -u; pwd; echo $HOME"]);
    assert_eq!(whoami, "0\n/root\n/root\n");
    // On a terminal (forced: the test's stdin is none): a pty of the default size,
    // stderr merged, CR LF line ends.
    let on_tty = env.rmachine_ok(&[
        "shell",
        M,
        "-t",
        "--",
        "sh",
        "-c",
        "tty; stty size; echo err >&2",
    ]);
    let lines: Vec<&str> = on_tty.split("\r\n").collect();
    assert!(lines[0].starts_with("/dev/pts/"), "{on_tty:?}");
    assert_eq!(&lines[1..], ["24 80", "err", ""], "{on_tty:?}");
    let out = env.rmachine(&["shell", M, "-t", "--", "sh", "-c", "exit 5"]);
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    let out = env.rmachine(&["shell", M, "--", "no-such-command"]);
    assert_eq!(out.status.code(), Some(127), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no-such-command: command not found"),
        "{out:?}"
    );

    // Stdin goes through, byte for byte, and its end is seen.
    let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let mut child = std::process::Command::new(rmachine_bin())
        .args(["shell", M, "--", "sha256sum"])
        .env("RMACHINE_HOME", &env.home)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || std::io::Write::write_all(&mut stdin, &payload));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(out.status.success(), "{out:?}");
    let want = {
        use sha2::Digest;
        let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        hex::encode(sha2::Sha256::digest(&payload))
    };
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with(&want),
        "{out:?}"
    );

    // A folder into the guest at a new path, and back out to a new host folder.
    let src = host.join("src");
    std::fs::create_dir_all(src.join("nested")).unwrap();
    std::fs::write(src.join("one.txt"), "first file\n").unwrap();
    std::fs::write(src.join("nested/two.bin"), (0..=255u8).collect::<Vec<_>>()).unwrap();
    env.rmachine_ok(&["cp", src.to_str().unwrap(), &format!("{M}:/tmp/x")]);
    let listed = env.rmachine_ok(&[
        "shell",
        M,
        "--",
        "sh",
        "-c",
        "cd /tmp/x && find . -type f | sort && stat -c %U one.txt",
    ]);
    assert_eq!(listed, "./nested/two.bin\n./one.txt\nroot\n");
    let back = host.join("back");
    env.rmachine_ok(&["cp", &format!("{M}:/tmp/x"), back.to_str().unwrap()]);
    assert_eq!(files(&back), files(&src));

    // A single file into an existing folder keeps its name; `/.` copies contents.
    env.rmachine_ok(&[
        "cp",
        src.join("one.txt").to_str().unwrap(),
        &format!("{M}:/tmp"),
    ]);
    assert_eq!(
        env.rmachine_ok(&["shell", M, "--", "cat", "/tmp/one.txt"]),
        "first file\n"
    );
    let contents = host.join("contents");
    std::fs::create_dir_all(&contents).unwrap();
    env.rmachine_ok(&["cp", &format!("{M}:/tmp/x/."), contents.to_str().unwrap()]);
    assert_eq!(files(&contents), files(&src));

    // Clear errors for what does not exist.
    let err = env.rmachine_err(&[
        "cp",
        &format!("{M}:/tmp/nothing-here"),
        back.to_str().unwrap(),
    ]);
    assert!(err.contains("no such file or folder"), "{err}");
    let err = env.rmachine_err(&[
        "cp",
        host.join("missing").to_str().unwrap(),
        &format!("{M}:/tmp"),
    ]);
    assert!(err.contains("no such file or folder"), "{err}");
    let err = env.rmachine_err(&["cp", src.to_str().unwrap(), &format!("{M}:/no/such/dir/x")]);
    assert!(err.contains("does not exist"), "{err}");

    env.rmachine_ok(&["stop", M]);
    let err = env.rmachine_err(&["shell", M, "--", "true"]);
    assert!(
        err.contains(&format!("machine {M} is not running")),
        "{err}"
    );
}
