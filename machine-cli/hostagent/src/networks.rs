//! The machine's NICs on networks between machines: its attachment to each network it is
//! a member of (stable MAC and address), the peers' names for its `/etc/hosts`, and each
//! network's switch, started when it is not running (the first member to start starts
//! it; it ends by itself after the last has gone).

use std::io::{BufRead, BufReader};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rmachine_machine::network::{Attachment, Networks};
use rmachine_machine::paths::Paths;
use rmachine_machine::store::Machine;
use rmachine_protocol::net::{HostEntry, NetworkNic};

/// The MAC of every machine's user-mode NIC (QEMU's default, given explicitly): the agent
/// takes DHCP on it and on no NIC of a network.
pub(crate) const PRIMARY_MAC: &str = "52:54:00:12:34:56";

/// How long a switch may take to listen.
const SWITCH_READY: Duration = Duration::from_secs(10);

/// The machine's place on its networks.
#[derive(Debug, Default)]
pub(crate) struct MachineNetworks {
    pub attachments: Vec<Attachment>,
    /// Every member of the machine's networks with its address there.
    pub hosts: Vec<HostEntry>,
}

impl MachineNetworks {
    /// The config disk's NICs.
    pub(crate) fn nics(&self) -> Vec<NetworkNic> {
        self.attachments
            .iter()
            .map(|a| NetworkNic {
                network: a.network.clone(),
                mac: a.mac.clone(),
                address: format!("{}/{}", a.address, a.prefix_len),
                mtu: None,
            })
            .collect()
    }

    /// The config disk's primary MAC: set only when there are other NICs to tell apart.
    pub(crate) fn primary_mac(&self) -> Option<String> {
        (!self.attachments.is_empty()).then(|| PRIMARY_MAC.to_string())
    }
}

/// The machine's attachments (joining a network it is configured for but not yet a
/// member of) and its peers' names.
pub(crate) fn attach(machine: &Machine, paths: &Paths) -> anyhow::Result<MachineNetworks> {
    let networks = Networks::new(paths);
    let mut out = MachineNetworks::default();
    for name in &machine.spec.networks {
        let attachment = networks
            .join(name, &machine.name)
            .with_context(|| format!("cannot attach to network {name}"))?;
        out.attachments.push(attachment);
    }
    out.hosts = networks
        .peers(&machine.spec.networks)?
        .into_iter()
        .map(|(name, ip)| HostEntry {
            name,
            ip: ip.to_string(),
        })
        .collect();
    Ok(out)
}

/// Starts the switch of every network in `attached` that is not running, and waits until
/// each listens.
pub(crate) async fn ensure_switches(
    attached: &MachineNetworks,
    paths: &Paths,
) -> anyhow::Result<()> {
    let networks = Networks::new(paths);
    for a in &attached.attachments {
        ensure_switch(&networks, &a.network).await?;
    }
    Ok(())
}

fn listening(networks: &Networks, name: &str) -> bool {
    std::os::unix::net::UnixStream::connect(networks.socket(name)).is_ok()
}

/// The networks whose switch process is gone (looked at through its pid file, not by
/// connecting: a connection would be a port of the switch).
pub(crate) fn switches_down(attached: &MachineNetworks, paths: &Paths) -> Vec<String> {
    let networks = Networks::new(paths);
    attached
        .attachments
        .iter()
        .filter(|a| !networks.switch_running(&a.network))
        .map(|a| a.network.clone())
        .collect()
}

async fn ensure_switch(networks: &Networks, name: &str) -> anyhow::Result<()> {
    if listening(networks, name) {
        return Ok(());
    }
    // One starter at a time: the lock is held until the switch listens.
    let lock_path = networks.lock_file(name);
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("cannot open {}", lock_path.display()))?;
    let lock = tokio::task::spawn_blocking(move || lock.lock().map(|()| lock))
        .await?
        .with_context(|| format!("cannot lock {}", lock_path.display()))?;
    if listening(networks, name) {
        return Ok(());
    }
    let log_path = networks.log(name);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("cannot open {}", log_path.display()))?;
    let exe = std::env::current_exe().context("cannot find this executable")?;
    let mut cmd = std::process::Command::new(&exe);
    cmd.args(["network-switch", name])
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // The switch serves every member: it is nobody's child to kill.
    rmachine_machine::sys::process::detach(&mut cmd);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start the switch of network {name}"))?;
    let started = Instant::now();
    while !listening(networks, name) {
        if let Some(status) = child.try_wait()? {
            bail!(
                "the switch of network {name} exited ({status}); its log ends:\n{}",
                tail(&log_path)
            );
        }
        if started.elapsed() > SWITCH_READY {
            bail!("the switch of network {name} did not listen within {SWITCH_READY:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tracing::info!(network = name, pid = child.id(), "switch started");
    // Reaped by init once this process exits; until then a zombie costs nothing.
    drop(child);
    drop(lock);
    Ok(())
}

fn tail(path: &std::path::Path) -> String {
    let lines: Vec<String> = std::fs::File::open(path)
        .map(|f| BufReader::new(f).lines().map_while(Result::ok).collect())
        .unwrap_or_default();
    lines[lines.len().saturating_sub(10)..].join("\n")
}

/// How long a network's switch waits for its first (or next) machine before it ends.
const SWITCH_IDLE_EXIT: Duration = Duration::from_secs(30);

/// Runs the Ethernet switch of network `name` (the process `rmachine network-switch NAME`
/// that [`ensure_switches`] starts) until no machine has been connected for a while, or
/// a stop is asked for. Its pid file tells host agents it runs.
pub fn run_network_switch(name: &str) -> anyhow::Result<()> {
    crate::init_logging();
    let networks = Networks::new(&Paths::from_env()?);
    networks.load(name)?;
    let socket = networks.socket(name);
    let pid_file = networks.pid_file(name);
    let me = rmachine_machine::sys::process::ProcessId::current();
    rmachine_machine::store::write_atomic(&pid_file, &serde_json::to_vec(&me)?)
        .with_context(|| format!("cannot write {}", pid_file.display()))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let result = rt.block_on(async {
        let shutdown = tokio_util::sync::CancellationToken::new();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            rmachine_machine::sys::signal::stop_requested().await;
            stop.cancel();
        });
        let options = rmachine_hostproxy::switch::SwitchOptions {
            idle_exit: Some(SWITCH_IDLE_EXIT),
            ..Default::default()
        };
        rmachine_hostproxy::switch::run(&socket, options, shutdown)
            .await
            .with_context(|| format!("the switch of network {name} failed"))
    });
    let _ = std::fs::remove_file(&pid_file);
    result.map(|_| ())
}
