//! The machine commands as plain functions over the `machine` library's [`Lifecycle`]:
//! what the Machines page, the Settings page and the tray do. Each is blocking (a start
//! takes seconds to minutes): the Tauri commands run them on a blocking thread.

use rmachine_machine::config::{
    DriverKind, Settings, DEFAULT_CPUS, DEFAULT_DISK_SIZE_GIB, DEFAULT_MEMORY_MIB,
};
use rmachine_machine::lifecycle::{Lifecycle, LogKind, MachineSummary, DEFAULT_MACHINE};
use serde::{Deserialize, Serialize};

use crate::error::{CommandError, CommandResult, ErrorKind};

/// The Machines page's data.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MachineList {
    pub machines: Vec<MachineSummary>,
    /// The docker CLI's current context (`None`: `default`).
    pub current_context: Option<String>,
    /// The machine whose context is current.
    pub active: Option<String>,
}

pub fn list(lc: &Lifecycle) -> CommandResult<MachineList> {
    Ok(MachineList {
        machines: lc.summaries()?,
        current_context: lc.current_context(),
        active: lc.active_machine(),
    })
}

/// The create form.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewMachine {
    pub name: String,
    /// `None`: the default (`defaults.toml`, else auto).
    #[serde(default)]
    pub driver: Option<DriverKind>,
    #[serde(default)]
    pub cpus: Option<u32>,
    #[serde(default)]
    pub memory_mib: Option<u32>,
    #[serde(default)]
    pub disk_size_gib: Option<u32>,
}

pub fn create(lc: &Lifecycle, new: &NewMachine) -> CommandResult<MachineSummary> {
    let settings = Settings {
        driver: new.driver,
        cpus: new.cpus,
        memory_mib: new.memory_mib,
        disk_size_gib: new.disk_size_gib,
        ..Settings::default()
    };
    let m = lc.create(new.name.trim(), &settings)?;
    Ok(lc.summary(&m.name)?)
}

/// The create form of an ssh machine (an existing Linux host).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewSshMachine {
    pub name: String,
    /// `user@host[:port]`.
    pub ssh_host: String,
    /// A private key file (default: the ssh-agent's keys, then ~/.ssh/id_*).
    #[serde(default)]
    pub ssh_key: Option<String>,
    /// The key's passphrase, when it is encrypted; used for this create only, never
    /// stored.
    #[serde(default)]
    pub passphrase: Option<String>,
    /// The host key's expected SHA256 fingerprint; none: pinned on first use.
    #[serde(default)]
    pub ssh_host_key: Option<String>,
    /// `auto` (install docker.io when missing) or `never` (adopt as is).
    #[serde(default)]
    pub install: Option<String>,
    #[serde(default)]
    pub engine_tls: bool,
    #[serde(default)]
    pub restart_engine: bool,
}

/// Creates an ssh machine: the host is prepared over SSH (its key pinned, probed, the
/// engine installed when allowed); `progress` hears each step.
pub fn create_ssh(
    lc: &Lifecycle,
    new: &NewSshMachine,
    progress: &mut (dyn FnMut(&str) + Send),
) -> CommandResult<MachineSummary> {
    use rmachine_machine::ssh::{
        host_key, remote::CreateOptions, InstallMode, Secret, SshSettings, SshTarget,
    };
    let invalid = |m: String| CommandError::new(ErrorKind::Invalid, m);
    let target = SshTarget::parse(new.ssh_host.trim()).map_err(invalid)?;
    let install = match new.install.as_deref().filter(|s| !s.is_empty()) {
        Some(i) => InstallMode::parse(i).map_err(invalid)?,
        None => InstallMode::Auto,
    };
    let fingerprint = match new.ssh_host_key.as_deref().map(str::trim) {
        Some(f) if !f.is_empty() => Some(host_key::parse_fingerprint(f).map_err(invalid)?),
        _ => None,
    };
    let settings = Settings {
        driver: Some(DriverKind::Ssh),
        mounts: Some(Vec::new()),
        ssh: Some(SshSettings {
            port: (target.port != rmachine_machine::ssh::DEFAULT_PORT).then_some(target.port),
            host: target.host,
            user: target.user,
            key: new
                .ssh_key
                .as_deref()
                .map(str::trim)
                .filter(|k| !k.is_empty())
                .map(Into::into),
            install,
            engine_tls: new.engine_tls,
        }),
        ..Settings::default()
    };
    let lc = lc
        .clone()
        .with_ssh_passphrase(new.passphrase.clone().filter(|p| !p.is_empty()).map(Secret));
    let options = CreateOptions {
        host_key: fingerprint,
        restart_engine: new.restart_engine,
    };
    let (m, _) = lc.create_ssh(new.name.trim(), &settings, &options, progress)?;
    Ok(lc.summary(&m.name)?)
}

pub fn start(
    lc: &Lifecycle,
    name: &str,
    progress: &mut dyn FnMut(&str),
) -> CommandResult<MachineSummary> {
    lc.start(name, progress)?;
    Ok(lc.summary(name)?)
}

pub fn stop(lc: &Lifecycle, name: &str, force: bool) -> CommandResult<MachineSummary> {
    lc.stop(name, force)?;
    Ok(lc.summary(name)?)
}

pub fn restart(
    lc: &Lifecycle,
    name: &str,
    progress: &mut dyn FnMut(&str),
) -> CommandResult<MachineSummary> {
    lc.restart(name, progress)?;
    Ok(lc.summary(name)?)
}

pub fn remove(lc: &Lifecycle, name: &str, force: bool) -> CommandResult<()> {
    Ok(lc.remove(name, force)?)
}

/// Makes the machine's context current, or `None`: the docker CLI's `default` context.
pub fn use_context(lc: &Lifecycle, name: Option<&str>) -> CommandResult<MachineList> {
    match name {
        Some(n) => lc.use_machine(n)?,
        None => lc.use_default_context()?,
    }
    list(lc)
}

/// Creates the machine the tray acts on (`default`) with the defaults when it does not
/// exist, as `rmachine start` does.
pub fn ensure_default(lc: &Lifecycle) -> CommandResult<()> {
    lc.ensure_exists(DEFAULT_MACHINE, &Settings::default())?;
    Ok(())
}

/// Starts the `default` machine, creating it first when it does not exist.
pub fn start_default(
    lc: &Lifecycle,
    progress: &mut dyn FnMut(&str),
) -> CommandResult<MachineSummary> {
    lc.start_or_create(DEFAULT_MACHINE, &Settings::default(), progress)?;
    Ok(lc.summary(DEFAULT_MACHINE)?)
}

/// The end of a machine log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LogText {
    pub text: String,
    /// The file's length: ask again from here to follow it.
    pub len: u64,
}

pub fn logs(lc: &Lifecycle, name: &str, kind: LogKind, max_bytes: u64) -> CommandResult<LogText> {
    let (text, len) = lc.log_tail(name, kind, max_bytes)?;
    Ok(LogText { text, len })
}

/// The Settings page's data: the defaults file and what an unset field means.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Defaults {
    pub settings: Settings,
    pub builtin_cpus: u32,
    pub builtin_memory_mib: u32,
    pub builtin_disk_size_gib: u32,
    pub host_cpus: u32,
    pub defaults_file: String,
}

pub fn defaults(lc: &Lifecycle) -> CommandResult<Defaults> {
    Ok(Defaults {
        settings: lc.defaults()?,
        builtin_cpus: DEFAULT_CPUS,
        builtin_memory_mib: DEFAULT_MEMORY_MIB,
        builtin_disk_size_gib: DEFAULT_DISK_SIZE_GIB,
        host_cpus: std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1),
        defaults_file: lc.store().paths().defaults_file().display().to_string(),
    })
}

/// Replaces the defaults for new machines (keeping the fields the page does not show).
pub fn set_defaults(lc: &Lifecycle, new: &NewDefaults) -> CommandResult<Defaults> {
    let current = lc.defaults()?;
    let settings = Settings {
        driver: new.driver,
        cpus: new.cpus,
        memory_mib: new.memory_mib,
        disk_size_gib: new.disk_size_gib,
        ..current
    };
    lc.set_defaults(&settings)?;
    defaults(lc)
}

/// A machine's engine settings (its `daemon.json`), as the Settings page's editor shows
/// them: what Docker Desktop's "Docker Engine" pane is, per machine.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EngineSettings {
    pub machine: String,
    /// The settings as indented JSON (`{}` when there are none).
    pub json: String,
    /// The settings a machine's engine may take.
    pub allowed: Vec<&'static str>,
    /// Whether the machine runs now (saved settings apply at its next start).
    pub running: bool,
    /// An ssh machine's engine settings are its host's own file, not editable here.
    pub editable: bool,
}

pub fn engine_settings(lc: &Lifecycle, name: &str) -> CommandResult<EngineSettings> {
    let machine = lc.store().load(name)?;
    let summary = lc.summary(name)?;
    Ok(EngineSettings {
        machine: machine.name.clone(),
        json: serde_json::to_string_pretty(&machine.spec.engine)
            .unwrap_or_else(|_| "{}".to_string()),
        allowed: rmachine_machine::engine_settings::allowed(),
        running: summary.state == "running",
        editable: machine.spec.driver != DriverKind::Ssh,
    })
}

/// Replaces a machine's engine settings with `json` (an object; empty or `{}`: none),
/// checked as `rmachine config set engine` checks them: a setting the engine may not take,
/// or a value of the wrong type, is refused by name and nothing is stored.
pub fn set_engine_settings(
    lc: &Lifecycle,
    name: &str,
    json: &str,
) -> CommandResult<EngineSettings> {
    let text = json.trim();
    let value = match serde_json::from_str::<serde_json::Value>(text) {
        _ if text.is_empty() => String::new(),
        Ok(serde_json::Value::Object(map)) if map.is_empty() => String::new(),
        Ok(serde_json::Value::Object(_)) => text.to_string(),
        Ok(_) => {
            return Err(CommandError::new(
                ErrorKind::Invalid,
                "the engine settings must be a JSON object, like {\"log-driver\": \"local\"}",
            ))
        }
        Err(e) => {
            return Err(CommandError::new(
                ErrorKind::Invalid,
                format!("the engine settings are not valid JSON: {e}"),
            ))
        }
    };
    lc.set_setting(name, "engine", &value)?;
    engine_settings(lc, name)
}

/// The Settings form (unset: the built-in default).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewDefaults {
    #[serde(default)]
    pub driver: Option<DriverKind>,
    #[serde(default)]
    pub cpus: Option<u32>,
    #[serde(default)]
    pub memory_mib: Option<u32>,
    #[serde(default)]
    pub disk_size_gib: Option<u32>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;
    use rmachine_machine::paths::Paths;
    use rmachine_machine::store::Store;

    /// A lifecycle in a temporary RMACHINE_HOME and docker config folder.
    fn lifecycle() -> (tempfile::TempDir, Lifecycle) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(Paths::with_roots(
            dir.path().join("home"),
            dir.path().join("cache"),
        ));
        let lc = Lifecycle::new(store, dir.path().join("docker"));
        (dir, lc)
    }

    fn fake(name: &str) -> NewMachine {
        NewMachine {
            name: name.into(),
            driver: Some(DriverKind::Fake),
            cpus: Some(1),
            memory_mib: Some(1024),
            disk_size_gib: Some(8),
        }
    }

    #[test]
    fn test_engine_settings_are_checked_before_they_are_stored() {
        let (_d, lc) = lifecycle();
        create(&lc, &fake("m")).unwrap();
        let empty = engine_settings(&lc, "m").unwrap();
        assert_eq!(empty.json, "{}");
        assert!(empty.allowed.contains(&"insecure-registries") && !empty.running && empty.editable);
        let saved =
            set_engine_settings(&lc, "m", r#"{"log-driver": "local", "debug": true}"#).unwrap();
        assert!(
            saved.json.contains("\"log-driver\": \"local\""),
            "{}",
            saved.json
        );
        for (bad, says) in [
            (
                r#"{"hosts": ["tcp://0.0.0.0:2375"]}"#,
                "\"hosts\" cannot be set",
            ),
            (r#"{"debug": "yes"}"#, "debug must be true or false"),
            ("{nope", "not valid JSON"),
            ("[1, 2]", "must be a JSON object"),
        ] {
            let e = set_engine_settings(&lc, "m", bad).unwrap_err();
            assert_eq!(e.kind, ErrorKind::Invalid, "{bad}");
            assert!(e.message.contains(says), "{bad}: {}", e.message);
        }
        // Nothing refused was stored.
        assert_eq!(engine_settings(&lc, "m").unwrap().json, saved.json);
        assert_eq!(set_engine_settings(&lc, "m", " {} ").unwrap().json, "{}");
        assert_eq!(
            set_engine_settings(&lc, "nope", "{}").unwrap_err().kind,
            ErrorKind::NotFound
        );
    }

    #[test]
    fn test_ssh_create_reports_bad_input_and_unreachable_hosts() {
        let (_d, lc) = lifecycle();
        let bad = NewSshMachine {
            name: "far".into(),
            ssh_host: "no-user-here".into(),
            ..Default::default()
        };
        assert_eq!(
            create_ssh(&lc, &bad, &mut |_| {}).unwrap_err().kind,
            ErrorKind::Invalid
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let unreachable = NewSshMachine {
            name: "far".into(),
            ssh_host: format!("me@127.0.0.1:{port}"),
            ..Default::default()
        };
        let mut heard = Vec::new();
        let err = create_ssh(&lc, &unreachable, &mut |d| heard.push(d.to_string())).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Remote, "{err:?}");
        assert!(
            err.message.contains("cannot reach 127.0.0.1"),
            "{}",
            err.message
        );
        assert!(heard[0].contains("connecting to me@127.0.0.1"), "{heard:?}");
        assert!(list(&lc).unwrap().machines.is_empty(), "nothing is left");
    }

    #[test]
    fn test_create_lists_machine_with_its_settings() {
        let (_d, lc) = lifecycle();
        let m = create(&lc, &fake("dev")).unwrap();
        assert_eq!(
            (m.state.as_str(), m.cpus, m.memory_mib, m.disk_size_gib),
            ("stopped", Some(1), Some(1024), Some(8))
        );
        assert_eq!(m.driver.as_deref(), Some("fake"));
        let l = list(&lc).unwrap();
        assert_eq!(l.machines.len(), 1);
        assert_eq!(l.active, None);
    }

    #[test]
    fn test_create_rejects_bad_input_with_kinds() {
        let (_d, lc) = lifecycle();
        create(&lc, &fake("dev")).unwrap();
        assert_eq!(
            create(&lc, &fake("dev")).unwrap_err().kind,
            ErrorKind::Exists
        );
        assert_eq!(
            create(&lc, &fake("Bad Name")).unwrap_err().kind,
            ErrorKind::Invalid
        );
        let e = create(
            &lc,
            &NewMachine {
                cpus: Some(0),
                ..fake("x")
            },
        )
        .unwrap_err();
        assert_eq!(e.kind, ErrorKind::Invalid);
        assert!(e.message.contains("cpus"), "{}", e.message);
    }

    #[test]
    fn test_start_stop_restart_report_state_and_progress() {
        let (_d, lc) = lifecycle();
        create(&lc, &fake("dev")).unwrap();
        let mut heard = Vec::new();
        assert_eq!(
            start(&lc, "dev", &mut |d| heard.push(d.to_string()))
                .unwrap()
                .state,
            "running"
        );
        assert!(!heard.is_empty());
        assert_eq!(stop(&lc, "dev", false).unwrap().state, "stopped");
        assert_eq!(restart(&lc, "dev", &mut |_| {}).unwrap().state, "running");
        assert_eq!(stop(&lc, "dev", true).unwrap().state, "stopped");
        assert_eq!(
            start(&lc, "nope", &mut |_| {}).unwrap_err().kind,
            ErrorKind::NotFound
        );
    }

    #[test]
    fn test_remove_refuses_running_machine_unless_forced() {
        let (_d, lc) = lifecycle();
        create(&lc, &fake("dev")).unwrap();
        start(&lc, "dev", &mut |_| {}).unwrap();
        assert_eq!(remove(&lc, "dev", false).unwrap_err().kind, ErrorKind::Busy);
        remove(&lc, "dev", true).unwrap();
        assert!(list(&lc).unwrap().machines.is_empty());
        assert_eq!(
            remove(&lc, "dev", false).unwrap_err().kind,
            ErrorKind::NotFound
        );
    }

    #[test]
    fn test_use_context_switches_active_machine() {
        let (_d, lc) = lifecycle();
        create(&lc, &fake("a")).unwrap();
        create(&lc, &fake("b")).unwrap();
        let l = use_context(&lc, Some("b")).unwrap();
        assert_eq!(l.active.as_deref(), Some("b"));
        assert_eq!(l.current_context.as_deref(), Some("rmachine-b"));
        assert!(l.machines.iter().find(|m| m.name == "b").unwrap().active);
        let l = use_context(&lc, None).unwrap();
        assert_eq!(l.active, None);
    }

    #[test]
    fn test_start_default_creates_it_from_the_defaults() {
        let (_d, lc) = lifecycle();
        set_defaults(
            &lc,
            &NewDefaults {
                driver: Some(DriverKind::Fake),
                cpus: Some(1),
                ..Default::default()
            },
        )
        .unwrap();
        let m = start_default(&lc, &mut |_| {}).unwrap();
        assert_eq!(
            (m.name.as_str(), m.state.as_str(), m.cpus),
            ("default", "running", Some(1))
        );
    }

    #[test]
    fn test_defaults_round_trip_and_reject_invalid() {
        let (_d, lc) = lifecycle();
        let d = defaults(&lc).unwrap();
        assert_eq!(d.settings, Settings::default());
        assert_eq!(d.builtin_memory_mib, DEFAULT_MEMORY_MIB);
        let d = set_defaults(
            &lc,
            &NewDefaults {
                memory_mib: Some(1024),
                disk_size_gib: Some(20),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(
            (d.settings.memory_mib, d.settings.disk_size_gib),
            (Some(1024), Some(20))
        );
        let e = set_defaults(
            &lc,
            &NewDefaults {
                memory_mib: Some(10),
                ..Default::default()
            },
        )
        .unwrap_err();
        assert_eq!(e.kind, ErrorKind::Invalid);
        // A machine created afterwards takes them.
        let m = create(
            &lc,
            &NewMachine {
                name: "n".into(),
                driver: Some(DriverKind::Fake),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(m.disk_size_gib, Some(20));
    }

    #[test]
    fn test_logs_of_a_machine_without_logs_are_empty() {
        let (_d, lc) = lifecycle();
        create(&lc, &fake("dev")).unwrap();
        assert_eq!(
            logs(&lc, "dev", LogKind::Console, 1000).unwrap(),
            LogText {
                text: String::new(),
                len: 0
            }
        );
        let path = lc.store().paths().machine("dev").hostagent_log();
        std::fs::write(&path, "line one\nline two\n").unwrap();
        let l = logs(&lc, "dev", LogKind::Hostagent, 1000).unwrap();
        assert_eq!(l.text, "line one\nline two\n");
        assert_eq!(l.len, 18);
    }
}
