//! `rmachine status [NAME]`: the machine's state, what it is doing, and its published
//! ports (with any that could not be opened).

use rmachine_machine::state::{MachineState, PhaseClock, StartKind, State};

use super::{Format, DEFAULT_MACHINE};

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// Machine name.
    #[arg(default_value = DEFAULT_MACHINE)]
    pub name: String,
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
    /// Also list the last start's steps and when each finished (the host agent's and the
    /// guest agent's; in JSON they are always there, as `start_phases`).
    #[arg(long)]
    pub phases: bool,
}

pub fn run(args: StatusArgs) -> anyhow::Result<()> {
    let m = super::load(&args.name)?;
    let s = &m.state;
    if args.format == Format::Json {
        println!("{}", serde_json::to_string_pretty(&s.redacted())?);
        return Ok(());
    }
    println!("machine {}: {}", m.name, s.state.name());
    match &s.state {
        State::Error(reason) => println!("error: {reason}"),
        State::Paused(reason) => println!("paused: {reason}"),
        _ => {}
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
    if args.phases {
        print!("{}", phase_table(s));
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

/// The last start's steps as a table: when each finished (seconds since the host agent
/// began the start), how long after the step before, and whose clock saw it.
fn phase_table(s: &MachineState) -> String {
    if s.start_phases.is_empty() {
        return "last start: no steps recorded\n".into();
    }
    let kind = match s.start_kind {
        Some(StartKind::TakeOver) => "took over the running VM",
        Some(StartKind::Boot) | None => "boot",
    };
    let mut out = format!("last start ({kind}):\n      at     step  clock  what\n");
    let mut before = 0;
    for p in &s.start_phases {
        let clock = match p.clock {
            PhaseClock::Host => "host",
            PhaseClock::Guest => "guest",
        };
        out += &format!(
            "{:>7.2} s {:>+7.2} s  {clock:<5}  {}\n",
            p.ms as f64 / 1000.0,
            (p.ms as f64 - before as f64) / 1000.0,
            p.name
        );
        before = p.ms;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rmachine_machine::state::StartPhase;

    #[test]
    fn test_phase_table_shows_each_step_and_its_share() {
        let mut s = MachineState::stopped();
        assert_eq!(phase_table(&s), "last start: no steps recorded\n");
        s.start_kind = Some(StartKind::Boot);
        s.start_phases = vec![
            StartPhase::host("VM process started", 150),
            StartPhase {
                name: "dockerd ready".into(),
                ms: 12_400,
                clock: PhaseClock::Guest,
            },
        ];
        let table = phase_table(&s);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines[0], "last start (boot):");
        assert_eq!(lines[2], "   0.15 s   +0.15 s  host   VM process started");
        assert_eq!(lines[3], "  12.40 s  +12.25 s  guest  dockerd ready");
    }
}
