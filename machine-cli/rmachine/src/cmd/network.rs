//! `rmachine network create|ls|inspect|rm`: networks between machines (the library's
//! `machine::network`).

use rmachine_machine::network::{Network, Networks};
use rmachine_machine::paths::Paths;

use super::Format;

#[derive(Debug, clap::Subcommand)]
pub enum NetworkCommand {
    /// Create a network machines can join (`rmachine create --network NAME`).
    Create(CreateArgs),
    /// List networks.
    #[command(alias = "list")]
    Ls(LsArgs),
    /// A network's subnet and members, as JSON.
    Inspect(NameArg),
    /// Remove a network no machine uses.
    Rm(NameArg),
}

#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    /// Network name.
    pub name: String,
    /// IPv4 subnet, e.g. 192.168.110.0/24 (default: the next free 192.168.x.0/24 from
    /// 192.168.105.0/24).
    #[arg(long)]
    pub subnet: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct LsArgs {
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
}

#[derive(Debug, clap::Args)]
pub struct NameArg {
    /// Network name.
    pub name: String,
}

pub fn run(command: NetworkCommand) -> anyhow::Result<()> {
    let networks = Networks::new(&Paths::from_env()?);
    match command {
        NetworkCommand::Create(args) => {
            let n = networks.create(&args.name, args.subnet.as_deref())?;
            println!("created network {} ({})", n.name, n.subnet);
        }
        NetworkCommand::Ls(args) => {
            let all = networks.list()?;
            match args.format {
                Format::Json => println!("{}", serde_json::to_string_pretty(&all)?),
                Format::Table => print!("{}", table(&all)),
            }
        }
        NetworkCommand::Inspect(args) => {
            println!(
                "{}",
                serde_json::to_string_pretty(&networks.load(&args.name)?)?
            );
        }
        NetworkCommand::Rm(args) => {
            networks.remove(&args.name)?;
            println!("removed network {}", args.name);
        }
    }
    Ok(())
}

fn table(all: &[Network]) -> String {
    let mut out = format!("{:<16} {:<20} MEMBERS\n", "NAME", "SUBNET");
    for n in all {
        let members: Vec<String> = n
            .members
            .iter()
            .map(|(m, a)| format!("{m} ({a})"))
            .collect();
        out.push_str(&format!(
            "{:<16} {:<20} {}\n",
            n.name,
            n.subnet.to_string(),
            members.join(", ")
        ));
    }
    out
}
