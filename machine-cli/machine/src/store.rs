//! The machine store: one folder per machine under `machines/`, with `machine.toml`
//! (user settings), `state.json` (generated) and the data disk.

use std::io::Write;
use std::path::Path;

use crate::config::{self, ConfigError, MachineSpec, Settings};
use crate::paths::{MachinePaths, Paths};
use crate::state::{MachineState, State};
use crate::sys::process::ProcessId;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("invalid machine name {0:?}: use 1-40 characters a-z, 0-9, '-' or '_', starting with a letter or digit")]
    InvalidName(String),
    #[error("no machine named {0:?} (see `rmachine ls`)")]
    NotFound(String),
    #[error("machine {0:?} already exists")]
    Exists(String),
    #[error("machine {name:?} is {state}; stop it first (or use --force)")]
    Busy { name: String, state: &'static str },
    #[error(
        "machine {name} is not running (it is {state}); start it with `rmachine start {name}`"
    )]
    NotRunning { name: String, state: &'static str },
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// One machine as found on disk.
#[derive(Debug, Clone)]
pub struct Machine {
    pub name: String,
    pub files: MachinePaths,
    /// `machine.toml` as written.
    pub file: Settings,
    /// Defaults and `machine.toml` resolved.
    pub spec: MachineSpec,
    /// `state.json`, checked against the host agent's liveness.
    pub state: MachineState,
}

impl Machine {
    /// How to reach the agent of this running machine; a machine in any other state is
    /// an error that says how to start it.
    pub fn running_carrier(&self) -> Result<crate::guest_link::Carrier, StoreError> {
        match (&self.state.state, &self.state.carrier) {
            (State::Running, Some(carrier)) => Ok(carrier.clone()),
            (state, _) => Err(StoreError::NotRunning {
                name: self.name.clone(),
                state: state.name(),
            }),
        }
    }
}

/// A machine name with the machine, or why it could not be loaded.
pub type Listed = (String, Result<Machine, StoreError>);

/// The machine store.
#[derive(Debug, Clone)]
pub struct Store {
    paths: Paths,
}

impl Store {
    pub fn new(paths: Paths) -> Store {
        Store { paths }
    }

    pub fn paths(&self) -> &Paths {
        &self.paths
    }

    /// Creates a machine with `settings` over the defaults. Fails if it exists.
    pub fn create(&self, name: &str, settings: &Settings) -> Result<Machine, StoreError> {
        validate_name(name)?;
        settings.validate()?;
        let files = self.paths.machine(name);
        if files.config().exists() {
            return Err(StoreError::Exists(name.to_string()));
        }
        let dir = files.dir();
        std::fs::create_dir_all(dir).map_err(io("cannot create", dir))?;
        crate::sys::fs::set_private_dir(dir).map_err(io("cannot make private", dir))?;
        config::write_machine_file(&files.config(), settings)?;
        self.load(name)
    }

    /// Loads a machine.
    pub fn load(&self, name: &str) -> Result<Machine, StoreError> {
        validate_name(name)?;
        let files = self.paths.machine(name);
        if !files.config().exists() {
            return Err(StoreError::NotFound(name.to_string()));
        }
        let file = config::read_machine_file(&files.config())?;
        let defaults = config::read_defaults(&self.paths.defaults_file())?;
        let spec = defaults.overlay(&file).resolve();
        let state = live_state(&files, name);
        Ok(Machine {
            name: name.to_string(),
            files,
            file,
            spec,
            state,
        })
    }

    /// Every machine's name, sorted.
    pub fn names(&self) -> Result<Vec<String>, StoreError> {
        let dir = self.paths.machines_dir();
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => {
                return Err(StoreError::Io {
                    what: "cannot list",
                    path: dir,
                    source: e,
                })
            }
        };
        let mut names: Vec<String> = entries
            .flatten()
            .filter(|e| e.path().join("machine.toml").exists())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| validate_name(n).is_ok())
            .collect();
        names.sort();
        Ok(names)
    }

    /// Every machine; one whose files are broken is reported as an `Err` in its slot.
    pub fn list(&self) -> Result<Vec<Listed>, StoreError> {
        Ok(self
            .names()?
            .into_iter()
            .map(|n| (n.clone(), self.load(&n)))
            .collect())
    }

    /// Replaces a machine's settings (applied at the next start).
    pub fn update(&self, name: &str, settings: &Settings) -> Result<Machine, StoreError> {
        settings.validate()?;
        let machine = self.load(name)?;
        config::write_machine_file(&machine.files.config(), settings)?;
        self.load(name)
    }

    /// Removes a machine's folder (data disk included). The caller stops it first.
    pub fn remove(&self, name: &str) -> Result<(), StoreError> {
        validate_name(name)?;
        let files = self.paths.machine(name);
        if !files.config().exists() && !files.dir().exists() {
            return Err(StoreError::NotFound(name.to_string()));
        }
        std::fs::remove_dir_all(files.dir()).map_err(io("cannot remove", files.dir()))
    }
}

/// `state.json`, corrected when it claims a host agent that is gone.
fn live_state(files: &MachinePaths, name: &str) -> MachineState {
    let mut state = MachineState::read(&files.state());
    if state.state.has_hostagent() && state.backend.as_deref() != Some("fake") {
        let alive = state.hostagent.is_some_and(|id| is_hostagent(&id, name));
        if !alive {
            let vm = if state.vm_alive() {
                format!(
                    "; its VM still runs: `rmachine start {name}` takes it over, `rmachine stop {name}` shuts it down"
                )
            } else {
                String::new()
            };
            state.state = State::Error(format!(
                "the host agent exited unexpectedly while {}{vm}; see `rmachine logs hostagent {name}`",
                state.state.name()
            ));
        }
    }
    state
}

/// Whether `id` is the live host agent of machine `name`: the same process (PID and start
/// time) running `rmachine hostagent NAME`.
pub fn is_hostagent(id: &ProcessId, name: &str) -> bool {
    id.cmdline()
        .is_some_and(|args| args.iter().any(|a| a == "hostagent") && args.iter().any(|a| a == name))
}

/// Machine names: 1-40 of a-z, 0-9, '-', '_', starting with a letter or digit.
pub fn validate_name(name: &str) -> Result<(), StoreError> {
    let ok = !name.is_empty()
        && name.len() <= 40
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && name.as_bytes()[0].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(StoreError::InvalidName(name.to_string()))
    }
}

/// Writes a file its owner's alone through a temporary sibling and a rename, so readers
/// never see half.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    {
        let mut f = crate::sys::fs::create_private(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StoreError {
    let path = path.to_path_buf();
    move |source| StoreError::Io { what, path, source }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::new(Paths::with_roots(
            dir.path().join("home"),
            dir.path().join("cache"),
        ));
        (dir, s)
    }

    #[test]
    fn test_create_load_list_remove() {
        let (_d, s) = store();
        let m = s
            .create(
                "dev",
                &Settings {
                    cpus: Some(1),
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!(m.spec.cpus, 1);
        assert_eq!(m.state.state, State::Stopped);
        s.create("alpha", &Settings::default()).unwrap();
        assert_eq!(s.names().unwrap(), ["alpha", "dev"]);
        s.remove("dev").unwrap();
        assert!(matches!(s.load("dev"), Err(StoreError::NotFound(_))));
        assert!(matches!(s.remove("dev"), Err(StoreError::NotFound(_))));
    }

    #[test]
    fn test_duplicate_and_bad_names() {
        let (_d, s) = store();
        s.create("dev", &Settings::default()).unwrap();
        assert!(matches!(
            s.create("dev", &Settings::default()),
            Err(StoreError::Exists(_))
        ));
        for bad in ["", "Dev", "../x", "-x", "a b", &"x".repeat(41)] {
            assert!(
                matches!(
                    s.create(bad, &Settings::default()),
                    Err(StoreError::InvalidName(_))
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn test_corrupt_machine_toml_is_reported_not_lost() {
        let (_d, s) = store();
        s.create("dev", &Settings::default()).unwrap();
        let path = s.paths().machine("dev").config();
        std::fs::write(&path, "version = 1\ncpus = [").unwrap();
        let err = s.load("dev").unwrap_err().to_string();
        assert!(err.contains("machine.toml"), "{err}");
        // The broken file is left as it was for the user to fix.
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "version = 1\ncpus = ["
        );
        let listed = s.list().unwrap();
        assert!(listed[0].1.is_err());
    }

    #[test]
    fn test_dead_hostagent_turns_running_into_error() {
        let (_d, s) = store();
        let m = s.create("dev", &Settings::default()).unwrap();
        let mut st = MachineState::stopped();
        st.state = State::Running;
        // This test process is alive but is no host agent; a PID with another start
        // time is another process.
        let me = ProcessId::current();
        for id in [
            me,
            ProcessId {
                started: me.started + 1,
                ..me
            },
        ] {
            st.hostagent = Some(id);
            st.write(&m.files.state()).unwrap();
            match s.load("dev").unwrap().state.state {
                State::Error(r) => assert!(r.contains("host agent"), "{r}"),
                other => panic!("{other:?}"),
            }
        }
        st.hostagent = Some(ProcessId {
            pid: u32::MAX - 1,
            started: 1,
        });
        st.write(&m.files.state()).unwrap();
        match s.load("dev").unwrap().state.state {
            State::Error(r) => assert!(r.contains("host agent"), "{r}"),
            other => panic!("{other:?}"),
        }
    }
}
