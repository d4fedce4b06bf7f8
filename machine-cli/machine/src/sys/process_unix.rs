use nix::sys::signal::{kill as send, Signal};
use nix::unistd::Pid;

fn signal(pid: u32, sig: Signal) {
    if let Ok(pid) = i32::try_from(pid) {
        let _ = send(Pid::from_raw(pid), sig);
    }
}

pub(super) fn terminate(pid: u32) {
    signal(pid, Signal::SIGTERM);
}

pub(super) fn kill(pid: u32) {
    signal(pid, Signal::SIGKILL);
}

/// Runs the child in a process group of its own: the terminal's Ctrl-C and a closing
/// terminal reach the caller, not the child (a host agent outlives `rmachine start`).
pub fn detach(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    cmd.process_group(0);
}

/// A child that waits 30 s (tests).
#[cfg(test)]
pub(super) fn sleeper() -> std::process::Command {
    let mut cmd = std::process::Command::new("sleep");
    cmd.arg("30");
    cmd
}
