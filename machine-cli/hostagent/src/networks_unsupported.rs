//! Networks between machines where there are no unix sockets for their switches
//! (Windows): a machine on a network is refused with the reason.

use rmachine_machine::network::Attachment;
use rmachine_machine::paths::Paths;
use rmachine_machine::store::Machine;
use rmachine_protocol::net::{HostEntry, NetworkNic};

/// The machine's place on its networks: none here.
#[derive(Debug, Default)]
pub(crate) struct MachineNetworks {
    pub attachments: Vec<Attachment>,
    pub hosts: Vec<HostEntry>,
}

impl MachineNetworks {
    pub(crate) fn nics(&self) -> Vec<NetworkNic> {
        Vec::new()
    }

    pub(crate) fn primary_mac(&self) -> Option<String> {
        None
    }
}

pub(crate) fn attach(machine: &Machine, _paths: &Paths) -> anyhow::Result<MachineNetworks> {
    if !machine.spec.networks.is_empty() {
        anyhow::bail!(
            "machine {} is on networks ({}), which need unix sockets for their switches (Linux and macOS hosts)",
            machine.name,
            machine.spec.networks.join(", ")
        );
    }
    Ok(MachineNetworks::default())
}

pub(crate) async fn ensure_switches(
    _attached: &MachineNetworks,
    _paths: &Paths,
) -> anyhow::Result<()> {
    Ok(())
}

pub(crate) fn switches_down(_attached: &MachineNetworks, _paths: &Paths) -> Vec<String> {
    Vec::new()
}

/// A network's switch needs unix sockets.
pub fn run_network_switch(name: &str) -> anyhow::Result<()> {
    anyhow::bail!(
        "network {name}: networks between machines need unix sockets (Linux and macOS hosts)"
    )
}
