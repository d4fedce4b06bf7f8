//! `rmachine ls [--format json]`: the machine list, with the same fields as the desktop
//! app's (`MachineSummary`).

use rmachine_machine::lifecycle::MachineSummary;

use super::{human_mib, Format};

#[derive(Debug, clap::Args)]
pub struct LsArgs {
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
}

pub fn run(args: LsArgs) -> anyhow::Result<()> {
    let rows = super::lifecycle()?.summaries()?;
    match args.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
        Format::Table => print!("{}", table(&rows)),
    }
    Ok(())
}

/// The STATE column: a stopped machine with a saved state (the next start resumes it)
/// reads `stopped (saved)`.
fn state_text(r: &MachineSummary) -> String {
    match &r.saved_state {
        Some(saved) if r.state == "stopped" && saved.damaged.is_none() => "stopped (saved)".into(),
        _ => r.state.clone(),
    }
}

fn table(rows: &[MachineSummary]) -> String {
    let mut out = format!(
        "{:<16} {:<15} {:<7} {:<6} {:>4} {:>8} {:>8}  {:<24} PORTS\n",
        "NAME", "STATE", "DRIVER", "ARCH", "CPUS", "MEMORY", "DISK", "DOCKER CONTEXT"
    );
    let dash = || "-".to_string();
    for r in rows {
        let ports: Vec<String> = r
            .ports
            .iter()
            .map(|p| format!("{}:{}/{}", p.host_ip, p.host_port, p.proto))
            .collect();
        let context = format!("{}{}", r.docker_context, if r.active { " *" } else { "" });
        let host = r
            .host
            .as_deref()
            .map(|h| format!(" @ {h}"))
            .unwrap_or_default();
        out.push_str(&format!(
            "{:<16} {:<15} {:<7} {:<6} {:>4} {:>8} {:>8}  {:<24} {}\n",
            r.name,
            state_text(r),
            r.driver.as_deref().unwrap_or("-"),
            r.arch.as_deref().unwrap_or("-"),
            r.cpus.map(|c| c.to_string()).unwrap_or_else(dash),
            r.memory_mib
                .map(|m| human_mib(u64::from(m)))
                .unwrap_or_else(dash),
            r.disk_size_gib
                .map(|d| format!("{d}GiB"))
                .unwrap_or_else(dash),
            context,
            ports.join(", ")
        ));
        out.push_str(&host);
        for warning in &r.warnings {
            out.push_str(&format!("  warning: {warning}\n"));
        }
    }
    out
}
