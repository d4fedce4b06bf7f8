//! Shared folders: one virtiofsd per folder (Linux).

use anyhow::Context;
use rmachine_machine::paths::Paths;
use rmachine_machine::qemu::QemuShare;
use rmachine_machine::store::Machine;
use rmachine_protocol::config_disk::Mount;

use super::Daemon;

/// How long virtiofsd may take to create its socket.
const VIRTIOFSD_READY: std::time::Duration = std::time::Duration::from_secs(10);

/// Starts one virtiofsd per shared folder, confined to that folder (its namespace
/// sandbox), with `--cache never`: every guest access goes to the host, so an edit on the
/// host is seen in the guest at once (virtio-fs has no channel for the host to
/// invalidate the guest's cache, so any caching policy would show stale files for up to
/// its timeout).
pub(crate) async fn start(
    machine: &Machine,
    paths: &Paths,
) -> anyhow::Result<(Vec<Daemon>, Vec<QemuShare>, Vec<Mount>)> {
    let (mut children, mut shares, mut mounts) = (Vec::new(), Vec::new(), Vec::new());
    if machine.spec.mounts.is_empty() {
        return Ok((children, shares, mounts));
    }
    let tool = rmachine_machine::host_tools::find_virtiofsd(paths)
        .context("virtiofsd is not installed (shared folders need it): run `rmachine setup`")?;
    let log_path = machine.files.virtiofsd_log();
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("cannot create {}", log_path.display()))?;
    for (index, share) in machine.spec.mounts.iter().enumerate() {
        if !share.path.is_dir() {
            anyhow::bail!(
                "shared folder {} does not exist or is not a folder (remove it from {} or create it)",
                share.path.display(),
                machine.files.config().display()
            );
        }
        let socket = machine.files.virtiofs_socket(index);
        let _ = std::fs::remove_file(&socket);
        let mut cmd = tokio::process::Command::from(tool.command());
        cmd.arg("--socket-path")
            .arg(&socket)
            .arg("--shared-dir")
            .arg(&share.path)
            .args([
                "--cache",
                "never",
                "--sandbox",
                "namespace",
                "--announce-submounts",
                "--log-level",
                "warn",
            ]);
        if share.read_only {
            cmd.arg("--readonly");
        }
        cmd.stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log.try_clone()?)
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot run virtiofsd {}", tool.binary.display()))?;
        let started = std::time::Instant::now();
        while !socket.exists() {
            if let Some(status) = child.try_wait()? {
                anyhow::bail!(
                    "virtiofsd for {} exited ({status}); see {}",
                    share.path.display(),
                    log_path.display()
                );
            }
            if started.elapsed() > VIRTIOFSD_READY {
                anyhow::bail!(
                    "virtiofsd for {} did not create its socket within {VIRTIOFSD_READY:?}",
                    share.path.display()
                );
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        tracing::info!(path = %share.path.display(), read_only = share.read_only, "virtiofsd started");
        let tag = format!("share{index}");
        shares.push(QemuShare {
            tag: tag.clone(),
            socket,
        });
        mounts.push(Mount {
            tag,
            guest_path: share.path.display().to_string(),
            read_only: share.read_only,
        });
        children.push(Daemon {
            process: super::Proc::child(child),
            serves: format!("shared folder {}", share.path.display()),
        });
    }
    Ok((children, shares, mounts))
}
