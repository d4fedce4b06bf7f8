//! `rmachine ls [--format json]`.

use rmachine_machine::docker_context;
use serde_json::json;

use super::{human_mib, Format};

#[derive(Debug, clap::Args)]
pub struct LsArgs {
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
}

pub fn run(args: LsArgs) -> anyhow::Result<()> {
    let store = super::store()?;
    let current = docker_context::docker_config_dir()
        .ok()
        .and_then(|d| docker_context::current(&d).ok().flatten());
    let mut rows = Vec::new();
    for (name, machine) in store.list()? {
        let context = docker_context::context_name(&name);
        let active = current.as_deref() == Some(context.as_str());
        rows.push(match machine {
            Ok(m) => json!({
                "name": name,
                "state": m.state.state.name(),
                "error": match &m.state.state { rmachine_machine::state::State::Error(r) => Some(r.clone()), _ => None },
                "driver": m.spec.driver.as_str(),
                "backend": m.state.backend,
                "cpus": m.spec.cpus,
                "memory_mib": m.spec.memory_mib,
                "disk_size_gib": m.spec.disk_size_gib,
                "docker_context": context,
                "active": active,
                "docker_host": format!("unix://{}", m.files.docker_socket().display()),
            }),
            Err(e) => json!({ "name": name, "state": "error", "error": format!("{e}"), "docker_context": context, "active": active }),
        });
    }
    match args.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
        Format::Table => {
            println!(
                "{:<16} {:<9} {:<7} {:>4} {:>8} {:>8}  DOCKER CONTEXT",
                "NAME", "STATE", "DRIVER", "CPUS", "MEMORY", "DISK"
            );
            for r in &rows {
                let s = |k: &str| r[k].as_str().unwrap_or("-").to_string();
                let n = |k: &str| r[k].as_u64();
                println!(
                    "{:<16} {:<9} {:<7} {:>4} {:>8} {:>8}  {}{}",
                    s("name"),
                    s("state"),
                    s("driver"),
                    n("cpus")
                        .map(|c| c.to_string())
                        .unwrap_or_else(|| "-".into()),
                    n("memory_mib").map(human_mib).unwrap_or_else(|| "-".into()),
                    n("disk_size_gib")
                        .map(|d| format!("{d}GiB"))
                        .unwrap_or_else(|| "-".into()),
                    s("docker_context"),
                    if r["active"].as_bool() == Some(true) {
                        " *"
                    } else {
                        ""
                    }
                );
            }
        }
    }
    Ok(())
}
