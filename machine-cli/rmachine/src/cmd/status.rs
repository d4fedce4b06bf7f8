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
        // state.json's fields, and the saved state the next start resumes (if any).
        let mut json = s.redacted();
        json["saved_state"] =
            serde_json::to_value(rmachine_machine::saved_state::summary(&m.files))?;
        println!("{}", serde_json::to_string_pretty(&json)?);
        return Ok(());
    }
    let saved = rmachine_machine::saved_state::summary(&m.files);
    match (&saved, &s.state) {
        (Some(saved), State::Stopped) => println!(
            "machine {}: stopped, {}",
            m.name,
            saved_line(&m.name, saved)
        ),
        _ => println!("machine {}: {}", m.name, s.state.name()),
    }
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
    match (s.start_kind, s.resume_ms) {
        (Some(StartKind::Resume), Some(ms)) => println!(
            "last start: resumed from the saved state (VM running again after {:.1} s)",
            ms as f64 / 1000.0
        ),
        _ => {
            if let Some(reason) = &s.cold_boot_reason {
                println!("last start: booted cold, the saved state was not resumed: {reason}");
            }
        }
    }
    if let Some(stop) = s.last_stop.as_ref().filter(|_| s.state == State::Stopped) {
        if !stop.saved {
            println!(
                "last stop: not saved ({})",
                stop.reason.as_deref().unwrap_or("no reason recorded")
            );
        }
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

/// A saved state in one line: how big, when, and what the next start does.
pub fn saved_line(name: &str, saved: &rmachine_machine::saved_state::SavedSummary) -> String {
    match &saved.damaged {
        Some(why) => format!(
            "with a saved state that will not be resumed ({why}): the next start discards it and boots cold"
        ),
        None => format!(
            "saved state of {} MiB (saved in {:.1} s): `rmachine start {name}` resumes it, `rmachine stop --no-save {name}` discards it",
            saved.size_bytes >> 20,
            saved.save_ms as f64 / 1000.0
        ),
    }
}

/// The last start's steps as a table: when each finished (seconds since the host agent
/// began the start), how long after the step before, and whose clock saw it.
fn phase_table(s: &MachineState) -> String {
    if s.start_phases.is_empty() {
        return "last start: no steps recorded\n".into();
    }
    let kind = match s.start_kind {
        Some(StartKind::TakeOver) => "took over the running VM",
        Some(StartKind::Resume) => "resumed from the saved state",
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
    fn test_saved_line_says_what_the_next_start_does() {
        let mut saved = rmachine_machine::saved_state::SavedSummary {
            saved_at_unix: 1,
            size_bytes: 300 << 20,
            save_ms: 2_700,
            damaged: None,
        };
        assert_eq!(
            saved_line("m", &saved),
            "saved state of 300 MiB (saved in 2.7 s): `rmachine start m` resumes it, `rmachine stop --no-save m` discards it"
        );
        saved.damaged = Some("the saved state is damaged".into());
        assert!(
            saved_line("m", &saved).contains("will not be resumed (the saved state is damaged)")
        );
        let mut s = MachineState::stopped();
        s.start_kind = Some(StartKind::Resume);
        s.start_phases = vec![StartPhase::host("VM resumed", 700)];
        assert!(phase_table(&s).starts_with("last start (resumed from the saved state):"));
    }

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
