//! `rmachine status [NAME]`: the machine's state, what it is doing, and its published
//! ports (with any that could not be opened).

use rmachine_machine::state::State;

use super::{Format, DEFAULT_MACHINE};

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// Machine name.
    #[arg(default_value = DEFAULT_MACHINE)]
    pub name: String,
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
}

pub fn run(args: StatusArgs) -> anyhow::Result<()> {
    let m = super::load(&args.name)?;
    let s = &m.state;
    if args.format == Format::Json {
        println!("{}", serde_json::to_string_pretty(&s.redacted())?);
        return Ok(());
    }
    println!("machine {}: {}", m.name, s.state.name());
    if let State::Error(reason) = &s.state {
        println!("error: {reason}");
    }
    if !s.detail.is_empty() {
        println!("doing: {}", s.detail);
    }
    for warning in &s.warnings {
        println!("warning: {warning}");
    }
    if let Some(b) = &s.backend {
        println!(
            "backend: {b} ({})",
            s.backend_reason.as_deref().unwrap_or("")
        );
    }
    if let (Some(p), Some(e)) = (s.ping_ms, s.engine_ready_ms) {
        println!(
            "boot: agent after {:.1} s, engine after {:.1} s",
            p as f64 / 1000.0,
            e as f64 / 1000.0
        );
    }
    if let Some(ssh) = &m.spec.ssh {
        println!(
            "host: {} (ssh; stop and start act on the local tunnel, never on the remote engine)",
            ssh.target()
        );
    }
    if s.state == State::Running {
        println!("docker: {}", m.files.docker_endpoint().docker_host());
    }
    if m.spec.ssh.is_some() {
        println!("ports: published TCP ports open on this computer's loopback; UDP is not forwarded over SSH");
    }
    for p in &s.ports {
        match &p.error {
            Some(e) => println!(
                "port {}:{}/{} ({}): NOT published: {e}",
                p.host_ip, p.host_port, p.proto, p.container
            ),
            None => println!(
                "port {}:{}/{} -> {}",
                p.host_ip, p.host_port, p.proto, p.container
            ),
        }
    }
    Ok(())
}
