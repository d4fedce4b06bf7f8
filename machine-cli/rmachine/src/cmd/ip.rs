//! `rmachine ip [NAME]`: the guest's address on its own network.

use rmachine_machine::guest_link::ControlClient;
use rmachine_protocol::control::{Reply, Request};

use super::DEFAULT_MACHINE;

#[derive(Debug, clap::Args)]
pub struct IpArgs {
    /// Machine name.
    #[arg(default_value = DEFAULT_MACHINE)]
    pub name: String,
}

pub fn run(args: IpArgs) -> anyhow::Result<()> {
    let m = super::load(&args.name)?;
    if let Some(ssh) = &m.spec.ssh {
        // An ssh machine is its host.
        println!("{}", ssh.host);
        return Ok(());
    }
    let carrier = m
        .state
        .carrier
        .clone()
        .ok_or_else(|| anyhow::anyhow!("machine {} is not running", args.name))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let info = rt.block_on(async {
        let mut c = ControlClient::connect(&carrier).await?;
        anyhow::Ok(c.call(Request::Info {}).await?)
    })?;
    match info {
        Reply::Info(info) => {
            println!(
                "{}",
                info.ip
                    .ok_or_else(|| anyhow::anyhow!("the guest has no network address"))?
            );
            Ok(())
        }
        other => anyhow::bail!("unexpected agent reply {other:?}"),
    }
}
