use std::os::windows::process::CommandExt;

/// `CREATE_NEW_PROCESS_GROUP`: Ctrl-C in the caller's console does not reach the child.
const CREATE_NEW_PROCESS_GROUP: u32 = 0x0000_0200;
/// `DETACHED_PROCESS`: the child has no console (it outlives the caller's window).
const DETACHED_PROCESS: u32 = 0x0000_0008;

fn end(pid: u32) {
    let mut system = sysinfo::System::new();
    let pid = sysinfo::Pid::from_u32(pid);
    system.refresh_processes(sysinfo::ProcessesToUpdate::Some(&[pid]), false);
    if let Some(p) = system.process(pid) {
        p.kill();
    }
}

/// A console-less process has no gentle stop request on Windows: it is ended.
pub(super) fn terminate(pid: u32) {
    end(pid);
}

pub(super) fn kill(pid: u32) {
    end(pid);
}

/// Runs the child without the caller's console, in a process group of its own.
pub fn detach(cmd: &mut std::process::Command) {
    cmd.creation_flags(CREATE_NEW_PROCESS_GROUP | DETACHED_PROCESS);
}

/// A child that waits about 30 s (tests).
#[cfg(test)]
pub(super) fn sleeper() -> std::process::Command {
    let mut cmd = std::process::Command::new("ping");
    cmd.args(["-n", "30", "127.0.0.1"]);
    cmd
}
