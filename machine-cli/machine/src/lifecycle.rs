//! Whole machine operations, as the CLI's verbs and the desktop app's buttons need them:
//! create (settings, data disk, docker context), start, stop, restart, remove (with the
//! context), make a machine's context current, a serializable summary for listings, and
//! the machine's logs. Each step is the one `rmachine create|start|stop|rm|use|ls|logs`
//! takes, so the CLI and the GUI behave the same.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::config::{self, ConfigError, Settings};
use crate::docker_context::{self, ContextError};
use crate::driver::{self, MachineError};
use crate::ssh::remote::{CreateOptions, RemoteRecord};
use crate::state::{PublishedPort, State};
use crate::store::{Machine, Store, StoreError};
use crate::sys::local_socket::Endpoint;

/// The machine `rmachine start` and the tray act on when none is named.
pub const DEFAULT_MACHINE: &str = "default";

/// Why a machine operation failed.
#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Machine(#[from] MachineError),
    #[error(transparent)]
    Context(#[from] ContextError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Paths(#[from] crate::paths::PathsError),
    #[error(transparent)]
    Network(#[from] crate::network::NetworkError),
    #[error("machine {name} exists; change its settings with `rmachine config set` (applied at the next start)")]
    SettingsOfExisting { name: String },
    #[error("disk: cannot shrink the data disk from {from}G to {to}G (data would be lost)")]
    ShrinkDisk { from: u32, to: u32 },
    #[error(transparent)]
    Bundle(#[from] crate::ssh::bundle::BundleError),
    #[error("no {arch} guest image is installed; pulling one from {source_ref} (the image-source setting) failed")]
    Pull {
        arch: rmachine_protocol::image::Arch,
        source_ref: String,
        #[source]
        source: Box<crate::image_registry::RegistryError>,
    },
    #[error("cannot prepare machine {name}")]
    Prepare {
        name: String,
        #[source]
        source: MachineError,
    },
}

/// One machine as a listing shows it (`rmachine ls --format json`, the GUI's table).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MachineSummary {
    pub name: String,
    /// `stopped`, `starting`, `running`, `paused`, `stopping`, `error`, …
    pub state: String,
    /// Why the machine is in the error state (or paused, with how it resumes), or why it
    /// could not be loaded.
    pub error: Option<String>,
    /// What the host agent is doing (progress of a start).
    pub detail: String,
    pub driver: Option<String>,
    pub backend: Option<String>,
    /// The guest architecture (`amd64`, `arm64`).
    pub arch: Option<String>,
    pub cpus: Option<u32>,
    pub memory_mib: Option<u32>,
    pub disk_size_gib: Option<u32>,
    pub docker_context: String,
    /// The remote host of an ssh machine (`user@host[:port]`).
    pub host: Option<String>,
    /// Whether its docker context is the current one.
    pub active: bool,
    /// `unix://…/docker.sock`, `npipe:////./pipe/…`.
    pub docker_host: Option<String>,
    /// The engine's local endpoint (socket file or named pipe).
    pub docker_endpoint: Option<Endpoint>,
    pub can_start_stop: bool,
    pub ports: Vec<PublishedPort>,
    pub started_at_unix: Option<u64>,
    pub engine_ready_ms: Option<u64>,
    /// Problems of a running machine that did not stop it (a shared folder's server exited).
    pub warnings: Vec<String>,
    /// A stopped machine's saved state (its next start resumes it), if it has one.
    pub saved_state: Option<crate::saved_state::SavedSummary>,
}

impl MachineSummary {
    /// The summary of a loaded machine.
    pub fn of(machine: &Machine, current_context: Option<&str>) -> MachineSummary {
        let context = docker_context::context_name(&machine.name);
        let d = driver::for_machine(machine);
        let s = &machine.state;
        let host = machine
            .spec
            .ssh
            .as_ref()
            .map(|ssh| ssh.target().to_string());
        let vm = host.is_none();
        MachineSummary {
            name: machine.name.clone(),
            state: s.state.name().to_string(),
            error: match &s.state {
                State::Error(r) | State::Paused(r) => Some(r.clone()),
                _ => None,
            },
            detail: s.detail.clone(),
            driver: Some(machine.spec.driver.as_str().to_string()),
            backend: s.backend.clone(),
            arch: Some(machine.spec.arch.to_string()).filter(|_| vm),
            cpus: Some(machine.spec.cpus).filter(|_| vm),
            memory_mib: Some(machine.spec.memory_mib).filter(|_| vm),
            disk_size_gib: Some(machine.spec.disk_size_gib).filter(|_| vm),
            active: current_context == Some(context.as_str()),
            docker_context: context,
            host,
            docker_host: Some(machine.files.docker_endpoint().docker_host()),
            docker_endpoint: Some(machine.files.docker_endpoint()),
            can_start_stop: d.capabilities().can_start_stop,
            ports: s.ports.clone(),
            started_at_unix: s.started_at_unix,
            engine_ready_ms: s.engine_ready_ms,
            warnings: s.warnings.clone(),
            saved_state: crate::saved_state::summary(&machine.files),
        }
    }

    /// The summary of a machine whose files could not be loaded.
    pub fn broken(
        name: &str,
        error: &dyn std::error::Error,
        current_context: Option<&str>,
    ) -> MachineSummary {
        let context = docker_context::context_name(name);
        MachineSummary {
            name: name.to_string(),
            state: "error".into(),
            error: Some(error_chain(error)),
            detail: String::new(),
            driver: None,
            backend: None,
            arch: None,
            cpus: None,
            memory_mib: None,
            disk_size_gib: None,
            active: current_context == Some(context.as_str()),
            docker_context: context,
            host: None,
            docker_host: None,
            docker_endpoint: None,
            can_start_stop: false,
            ports: Vec::new(),
            started_at_unix: None,
            engine_ready_ms: None,
            warnings: Vec::new(),
            saved_state: None,
        }
    }
}

/// Which log of a machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogKind {
    /// The guest's serial console.
    Console,
    /// The host agent.
    Hostagent,
    /// The VM process (rmachine-vmm or QEMU).
    Vmm,
}

impl LogKind {
    /// The file of this log.
    pub fn path(self, machine: &Machine) -> PathBuf {
        match self {
            LogKind::Console => machine.files.console_log(),
            LogKind::Hostagent => machine.files.hostagent_log(),
            LogKind::Vmm => machine.files.vmm_log(),
        }
    }
}

/// The machine store together with the docker CLI's config folder (for the contexts).
#[derive(Debug, Clone)]
pub struct Lifecycle {
    store: Store,
    docker_config: PathBuf,
    /// The ssh key's passphrase for this process's operations, when the face asked for
    /// it (never stored).
    ssh_passphrase: Option<crate::ssh::Secret>,
}

impl Lifecycle {
    pub fn new(store: Store, docker_config: PathBuf) -> Lifecycle {
        Lifecycle {
            store,
            docker_config,
            ssh_passphrase: None,
        }
    }

    /// Uses `passphrase` for the ssh key of the machines this lifecycle creates and starts.
    pub fn with_ssh_passphrase(mut self, passphrase: Option<crate::ssh::Secret>) -> Lifecycle {
        self.ssh_passphrase = passphrase;
        self
    }

    /// The driver of `machine`, with what this face gave it.
    fn driver(&self, machine: &Machine) -> Box<dyn driver::Driver> {
        match machine.spec.driver {
            crate::config::DriverKind::Ssh => {
                Box::new(driver::SshDriver::new(self.ssh_passphrase.clone()))
            }
            _ => driver::for_machine(machine),
        }
    }

    /// The store and docker config folder the environment names (`RMACHINE_HOME`,
    /// `DOCKER_CONFIG`, `HOME`).
    pub fn from_env() -> Result<Lifecycle, LifecycleError> {
        let paths = crate::paths::Paths::from_env()?;
        Ok(Lifecycle::new(
            Store::new(paths),
            docker_context::docker_config_dir()?,
        ))
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn docker_config(&self) -> &Path {
        &self.docker_config
    }

    /// The docker CLI's current context, if one is set (a broken config.json reads as none).
    pub fn current_context(&self) -> Option<String> {
        docker_context::current(&self.docker_config).ok().flatten()
    }

    /// The machine whose context is current, if any.
    pub fn active_machine(&self) -> Option<String> {
        self.current_context()
            .and_then(|c| c.strip_prefix("rmachine-").map(str::to_string))
    }

    /// Every machine, a broken one as an error row.
    pub fn summaries(&self) -> Result<Vec<MachineSummary>, LifecycleError> {
        let current = self.current_context();
        Ok(self
            .store
            .list()?
            .into_iter()
            .map(|(name, m)| match m {
                Ok(m) => MachineSummary::of(&m, current.as_deref()),
                Err(e) => MachineSummary::broken(&name, &e, current.as_deref()),
            })
            .collect())
    }

    /// One machine's summary.
    pub fn summary(&self, name: &str) -> Result<MachineSummary, LifecycleError> {
        let m = self.store.load(name)?;
        Ok(MachineSummary::of(&m, self.current_context().as_deref()))
    }

    /// Creates a machine with `settings` over the defaults, prepares what its driver needs
    /// (the data disk) and writes its docker context. A failed preparation leaves nothing.
    pub fn create(&self, name: &str, settings: &Settings) -> Result<Machine, LifecycleError> {
        if settings.ssh.is_some() {
            return self
                .create_ssh(name, settings, &CreateOptions::default(), &mut |_| {})
                .map(|(m, _)| m);
        }
        // Its networks must exist before anything is made.
        for network in settings.networks.iter().flatten() {
            self.networks().load(network)?;
        }
        let machine = self.store.create(name, settings)?;
        if let Err(e) = self.join_networks(&machine) {
            let _ = self.store.remove(name);
            return Err(e);
        }
        let d = driver::for_machine(&machine);
        if let Err(source) = d.create(&machine) {
            let _ = self.store.remove(name);
            return Err(LifecycleError::Prepare {
                name: name.to_string(),
                source,
            });
        }
        self.write_context(&machine)?;
        tracing::info!(
            machine = name,
            driver = machine.spec.driver.as_str(),
            "machine created"
        );
        Ok(machine)
    }

    /// Creates an ssh machine: its settings, then its host prepared over SSH (host key
    /// pinned, probe, engine installed when allowed, TLS when asked; `progress` hears each
    /// step), then its docker context. A failure leaves no machine (and says which step
    /// failed).
    pub fn create_ssh(
        &self,
        name: &str,
        settings: &Settings,
        options: &CreateOptions,
        progress: &mut (dyn FnMut(&str) + Send),
    ) -> Result<(Machine, RemoteRecord), LifecycleError> {
        let machine = self.store.create(name, settings)?;
        let d = driver::SshDriver::new(self.ssh_passphrase.clone());
        let record = match d.prepare(&machine, options, progress) {
            Ok(r) => r,
            Err(source) => {
                let _ = self.store.remove(name);
                return Err(LifecycleError::Prepare {
                    name: name.to_string(),
                    source,
                });
            }
        };
        self.write_context(&machine)?;
        tracing::info!(machine = name, driver = "ssh", "machine created");
        Ok((self.store.load(name)?, record))
    }

    /// Re-issues an ssh machine's engine server certificate (after the host's address
    /// changed); the client certificate stays. Returns the certificate's names.
    pub fn regenerate_certs(
        &self,
        name: &str,
        progress: &mut (dyn FnMut(&str) + Send),
    ) -> Result<Vec<String>, LifecycleError> {
        let machine = self.store.load(name)?;
        Ok(driver::SshDriver::new(self.ssh_passphrase.clone())
            .regenerate_certs(&machine, progress)?)
    }

    /// An ssh machine as a bundle for another computer (see [`crate::ssh::bundle`]).
    pub fn export(
        &self,
        name: &str,
        include_secrets: bool,
    ) -> Result<crate::ssh::bundle::Bundle, LifecycleError> {
        let m = self.store.load(name)?;
        Ok(crate::ssh::bundle::Bundle::of(
            name,
            m.spec.ssh.as_ref(),
            &m.files,
            include_secrets,
            dirs::home_dir().as_deref(),
        )?)
    }

    /// Recreates an exported ssh machine here as `name` (default: its exported name),
    /// paths made local: its pin is in place before the first connection, which then
    /// checks it and that the engine answers. A failure leaves no machine.
    pub fn import(
        &self,
        bundle: &crate::ssh::bundle::Bundle,
        name: Option<&str>,
        progress: &mut (dyn FnMut(&str) + Send),
    ) -> Result<Machine, LifecycleError> {
        let name = name.unwrap_or(&bundle.name);
        let settings = Settings {
            driver: Some(crate::config::DriverKind::Ssh),
            mounts: Some(Vec::new()),
            ssh: Some(bundle.settings_here()),
            ..Settings::default()
        };
        let machine = self.store.create(name, &settings)?;
        let prepared = bundle
            .install(&machine.files)
            .map_err(|source| MachineError::Io {
                what: "cannot write the imported files into",
                path: machine.files.dir().to_path_buf(),
                source,
            })
            .and_then(|()| {
                driver::SshDriver::new(self.ssh_passphrase.clone()).verify(&machine, progress)
            });
        if let Err(source) = prepared {
            let _ = self.store.remove(name);
            return Err(LifecycleError::Prepare {
                name: name.to_string(),
                source,
            });
        }
        self.write_context(&machine)?;
        tracing::info!(machine = name, "machine imported");
        Ok(self.store.load(name)?)
    }

    /// The networks between machines of this home.
    pub fn networks(&self) -> crate::network::Networks {
        crate::network::Networks::new(self.store.paths())
    }

    /// Makes the machine a member of exactly its configured networks (an address on each
    /// it joins; the ones it left free theirs), and tells the running members of the
    /// networks whose members changed.
    fn join_networks(&self, machine: &Machine) -> Result<(), LifecycleError> {
        let networks = self.networks();
        let before = networks.list()?;
        for name in &machine.spec.networks {
            networks.join(name, &machine.name)?;
        }
        networks.leave_all_but(&machine.name, &machine.spec.networks)?;
        let after = networks.list()?;
        let changed: Vec<String> = after
            .iter()
            .filter(|n| !before.contains(n))
            .chain(
                before
                    .iter()
                    .filter(|n| !after.iter().any(|a| a.name == n.name)),
            )
            .map(|n| n.name.clone())
            .collect();
        self.refresh_peers(&changed);
        Ok(())
    }

    /// Sends the current peer names to every running machine on one of `changed` (best
    /// effort: a machine that cannot be reached gets them at its next start).
    fn refresh_peers(&self, changed: &[String]) {
        if changed.is_empty() {
            return;
        }
        let networks = self.networks();
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        for (name, machine) in self.store.list().unwrap_or_default() {
            let Ok(machine) = machine else { continue };
            if !machine.spec.networks.iter().any(|n| changed.contains(n)) {
                continue;
            }
            let (Ok(carrier), Ok(peers)) = (
                machine.running_carrier(),
                networks.peers(&machine.spec.networks),
            ) else {
                continue;
            };
            let hosts = peers
                .into_iter()
                .map(|(name, ip)| rmachine_protocol::net::HostEntry {
                    name,
                    ip: ip.to_string(),
                })
                .collect();
            let told = rt.block_on(async {
                let mut c = crate::guest_link::ControlClient::connect(&carrier).await?;
                c.call(rmachine_protocol::control::Request::SetHosts { hosts })
                    .await
            });
            if let Err(e) = told {
                tracing::warn!(machine = %name, error = %e, "cannot tell the machine its peers' names");
            }
        }
    }

    /// Writes (or refreshes) the machine's docker context.
    pub fn write_context(&self, machine: &Machine) -> Result<(), ContextError> {
        docker_context::write(
            &self.docker_config,
            &docker_context::context_name(&machine.name),
            &machine.files.docker_endpoint().docker_host(),
            &format!("rmachine machine {}", machine.name),
        )
    }

    /// Starts a machine and waits until its engine answers (a running one is left as it
    /// is); `progress` hears what the start is doing. Returns the machine as it is then.
    pub fn start(
        &self,
        name: &str,
        progress: &mut dyn FnMut(&str),
    ) -> Result<Machine, LifecycleError> {
        let machine = self.store.load(name)?;
        if machine.state.state != State::Running {
            self.write_context(&machine)?;
            let d = self.driver(&machine);
            if !d.capabilities().can_start_stop {
                return Err(MachineError::Unsupported {
                    driver: machine.spec.driver.as_str(),
                    op: "start",
                }
                .into());
            }
            let _span = tracing::info_span!("start", machine = name).entered();
            self.pull_image_if_missing(&machine, progress)?;
            d.start(&machine, progress)?;
            tracing::info!("machine running");
        }
        Ok(self.store.load(name)?)
    }

    /// A VM machine that boots the newest image of its architecture, with none installed:
    /// the image is pulled from its `image-source` setting (the machine's, else the
    /// defaults'), when there is one. Otherwise nothing happens here (the driver says that
    /// no image is installed, and how to get one).
    fn pull_image_if_missing(
        &self,
        machine: &Machine,
        progress: &mut dyn FnMut(&str),
    ) -> Result<(), LifecycleError> {
        let spec = &machine.spec;
        if spec.ssh.is_some() || spec.image.is_some() {
            return Ok(());
        }
        let paths = self.store.paths();
        let installed = crate::image_store::list(paths)
            .map(|l| {
                l.images
                    .iter()
                    .any(|i| i.manifest.arch == spec.arch && i.usable())
            })
            .unwrap_or(true);
        if installed {
            return Ok(());
        }
        let source_ref = match spec.image_source.clone() {
            Some(s) => s,
            None => match self.defaults()?.image_source {
                Some(s) => s,
                None => return Ok(()),
            },
        };
        progress(&format!(
            "no {} guest image is installed: pulling {source_ref}",
            spec.arch
        ));
        let options = crate::image_registry::Options {
            plain_http: false,
            docker_config: Some(self.docker_config.clone()),
        };
        let pulled = crate::image_registry::pull(paths, &source_ref, spec.arch, &options, progress)
            .map_err(|source| LifecycleError::Pull {
                arch: spec.arch,
                source_ref: source_ref.clone(),
                source: Box::new(source),
            })?;
        progress(&format!(
            "installed image {}",
            pulled.image.manifest.version
        ));
        Ok(())
    }

    /// Starts machine `name`, creating it with `settings` first when it does not exist (as
    /// `rmachine start` and the tray's start do). Settings for a machine that exists are
    /// refused: they change with [`Lifecycle::set_setting`]. Returns the machine and
    /// whether it was created.
    pub fn start_or_create(
        &self,
        name: &str,
        settings: &Settings,
        progress: &mut dyn FnMut(&str),
    ) -> Result<(Machine, bool), LifecycleError> {
        if self.store.load(name).is_ok() && *settings != Settings::default() {
            return Err(LifecycleError::SettingsOfExisting {
                name: name.to_string(),
            });
        }
        let created = self.ensure_exists(name, settings)?;
        if created {
            progress(&format!("created machine {name}"));
        }
        Ok((self.start(name, progress)?, created))
    }

    /// Creates machine `name` with `settings` when it does not exist; returns whether it
    /// did.
    pub fn ensure_exists(&self, name: &str, settings: &Settings) -> Result<bool, LifecycleError> {
        match self.store.load(name) {
            Ok(_) => Ok(false),
            Err(StoreError::NotFound(_)) => {
                self.create(name, settings)?;
                Ok(true)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Changes one setting of a machine (applied at its next start); the data disk only
    /// grows.
    pub fn set_setting(
        &self,
        name: &str,
        key: &str,
        value: &str,
    ) -> Result<Machine, LifecycleError> {
        let machine = self.store.load(name)?;
        let mut settings = machine.file.clone();
        settings.set(key, value)?;
        if let Some(to) = settings
            .disk_size_gib
            .filter(|&to| to < machine.spec.disk_size_gib)
        {
            return Err(LifecycleError::ShrinkDisk {
                from: machine.spec.disk_size_gib,
                to,
            });
        }
        for network in settings.networks.iter().flatten() {
            self.networks().load(network)?;
        }
        let machine = self.store.update(name, &settings)?;
        self.join_networks(&machine)?;
        Ok(machine)
    }

    /// Changes one default for new machines.
    pub fn set_default(&self, key: &str, value: &str) -> Result<Settings, LifecycleError> {
        let mut settings = self.defaults()?;
        settings.set(key, value)?;
        self.set_defaults(&settings)?;
        Ok(settings)
    }

    /// Everything about a machine (`rmachine inspect`): settings, state (the boot's token
    /// hidden), driver and backend with the reason for the choice, endpoints, files.
    pub fn inspect(&self, name: &str) -> Result<serde_json::Value, LifecycleError> {
        let m = self.store.load(name)?;
        let d = driver::for_machine(&m);
        let mut choice = driver::choose_backend(m.spec.driver, m.spec.arch);
        if m.spec.driver == crate::config::DriverKind::Ssh {
            choice.reason = "the engine runs on the ssh host".into();
            choice.accel_reason = "the engine runs on the ssh host".into();
        }
        let remote = crate::ssh::remote::RemoteRecord::read(&m.files.remote_record());
        Ok(serde_json::json!({
            "name": m.name,
            "arch": m.spec.arch,
            "settings": m.spec,
            "state": m.state.redacted(),
            "driver": {
                "kind": d.kind().as_str(),
                "capabilities": d.capabilities(),
                "backend": m.state.backend.clone().unwrap_or_else(|| if d.capabilities().remote { "ssh".into() } else { choice.backend.as_str().to_string() }),
                "accel": choice.accel.as_str(),
                "accel_reason": choice.accel_reason,
                "reason": m.state.backend_reason.clone().unwrap_or(choice.reason),
            },
            "endpoints": d.endpoints(&m)?,
            "remote": remote,
            "docker_context": docker_context::context_name(&m.name),
            "files": {
                "dir": m.files.dir(),
                "config": m.files.config(),
                "data_disk": m.files.data_disk(),
                "docker_endpoint": m.files.docker_endpoint(),
                "console_log": m.files.console_log(),
                "hostagent_log": m.files.hostagent_log(),
                "vmm_log": m.files.vmm_log(),
                "saved_state": m.files.saved_state(),
                "saved_header": m.files.saved_header(),
            },
            "saved_state": crate::saved_state::summary(&m.files),
        }))
    }

    /// Stops a machine: saved where its driver can (`rmachine stop`), or at once with
    /// `force` (never saved). A stopped machine is left as is.
    pub fn stop(&self, name: &str, force: bool) -> Result<Machine, LifecycleError> {
        self.stop_with(
            name,
            if force {
                StopMode::Force
            } else {
                StopMode::Save
            },
        )
    }

    /// Stops a machine the way `mode` says; the machine's `state.last_stop` then says
    /// whether it was saved, and why not. [`StopMode::Shutdown`] also discards the saved
    /// state of a machine that is already stopped (its next start boots cold).
    pub fn stop_with(&self, name: &str, mode: StopMode) -> Result<Machine, LifecycleError> {
        let machine = self.store.load(name)?;
        if machine.state.state != State::Stopped {
            let d = driver::for_machine(&machine);
            let _span = tracing::info_span!("stop", machine = name, ?mode).entered();
            match mode {
                StopMode::Force => d.kill(&machine)?,
                StopMode::Save => d.stop(&machine, true)?,
                StopMode::Shutdown => d.stop(&machine, false)?,
            }
            tracing::info!("machine stopped");
        }
        if mode == StopMode::Shutdown {
            self.discard_saved(name)?;
        }
        Ok(self.store.load(name)?)
    }

    /// Removes a stopped machine's saved state, if it has one (its next start boots
    /// cold); returns whether it had one.
    pub fn discard_saved(&self, name: &str) -> Result<bool, LifecycleError> {
        let machine = self.store.load(name)?;
        let had = crate::saved_state::discard(&machine.files).map_err(|source| StoreError::Io {
            what: "cannot remove the saved state in",
            path: machine.files.dir().to_path_buf(),
            source,
        })?;
        if had {
            tracing::info!(machine = name, "saved state discarded");
        }
        Ok(had)
    }

    /// Stops (when not stopped, with a full shutdown: a restart boots afresh) and starts a
    /// machine.
    pub fn restart(
        &self,
        name: &str,
        progress: &mut dyn FnMut(&str),
    ) -> Result<Machine, LifecycleError> {
        self.stop_with(name, StopMode::Shutdown)?;
        self.start(name, progress)
    }

    /// Removes a machine with its data disk and docker context. A machine that is not
    /// stopped (or in error) is refused unless `force`, which kills it first.
    pub fn remove(&self, name: &str, force: bool) -> Result<(), LifecycleError> {
        self.remove_with(name, force, false, &mut |_| {})
    }

    /// [`Lifecycle::remove`]; with `purge_remote`, an ssh machine's host is first rid of
    /// what rmachine changed there (its TLS setup, the packages it installed). Without it
    /// the remote engine is left alone.
    pub fn remove_with(
        &self,
        name: &str,
        force: bool,
        purge_remote: bool,
        progress: &mut (dyn FnMut(&str) + Send),
    ) -> Result<(), LifecycleError> {
        let machine = match self.store.load(name) {
            Ok(m) => Some(m),
            // A machine whose machine.toml is broken can still be removed with force.
            Err(StoreError::Config(_)) if force => None,
            Err(e) => return Err(e.into()),
        };
        if let Some(m) = &machine {
            let busy = !matches!(m.state.state, State::Stopped | State::Error(_));
            if busy && !force {
                return Err(StoreError::Busy {
                    name: name.to_string(),
                    state: m.state.state.name(),
                }
                .into());
            }
            // Also for an error state: a VM process may be left.
            let d = self.driver(m);
            if purge_remote && d.capabilities().remote {
                driver::SshDriver::new(self.ssh_passphrase.clone()).purge_remote(m, progress)?;
            }
            d.kill(m)?;
            d.remove(m)?;
        }
        self.networks().leave_all_but(name, &[])?;
        self.store.remove(name)?;
        docker_context::remove(&self.docker_config, &docker_context::context_name(name))?;
        tracing::info!(machine = name, "machine removed");
        Ok(())
    }

    /// Makes the machine's docker context the current one.
    pub fn use_machine(&self, name: &str) -> Result<(), LifecycleError> {
        let m = self.store.load(name)?;
        self.write_context(&m)?;
        docker_context::set_current(
            &self.docker_config,
            Some(&docker_context::context_name(name)),
        )?;
        Ok(())
    }

    /// Switches the docker CLI back to its `default` context.
    pub fn use_default_context(&self) -> Result<(), LifecycleError> {
        docker_context::set_current(&self.docker_config, None)?;
        Ok(())
    }

    /// The last `max_bytes` of a machine's log (empty when it has none yet), cut at a
    /// line start, and the file's length (to follow it from there).
    pub fn log_tail(
        &self,
        name: &str,
        kind: LogKind,
        max_bytes: u64,
    ) -> Result<(String, u64), LifecycleError> {
        let m = self.store.load(name)?;
        let path = kind.path(&m);
        Ok(
            read_tail(&path, max_bytes).map_err(|source| StoreError::Io {
                what: "cannot read",
                path,
                source,
            })?,
        )
    }

    /// What a machine's log holds from byte `offset` on, and the file's length: a follower
    /// (`rmachine logs -f`, the desktop's log view) asks again from that length. A log
    /// shorter than `offset` was started anew (a new boot): it is read from its start.
    pub fn log_from(
        &self,
        name: &str,
        kind: LogKind,
        offset: u64,
    ) -> Result<(Vec<u8>, u64), LifecycleError> {
        let m = self.store.load(name)?;
        let path = kind.path(&m);
        Ok(read_from(&path, offset).map_err(|source| StoreError::Io {
            what: "cannot read",
            path,
            source,
        })?)
    }

    /// What a new machine made with the defaults and `settings` would be, before anything
    /// is made: its resolved settings and the backend and accelerator its driver would
    /// pick, with the reasons (a first-run offer says them before it starts).
    pub fn plan(&self, settings: &Settings) -> Result<MachinePlan, LifecycleError> {
        let spec = self.defaults()?.overlay(settings).resolve();
        let choice = driver::choose_backend(spec.driver, spec.arch);
        Ok(MachinePlan {
            driver: spec.driver.as_str().to_string(),
            backend: choice.backend.as_str().to_string(),
            accel: choice.accel.as_str().to_string(),
            reason: choice.reason,
            accel_reason: choice.accel_reason,
            arch: spec.arch.to_string(),
            cpus: spec.cpus,
            memory_mib: spec.memory_mib,
            disk_size_gib: spec.disk_size_gib,
        })
    }

    /// The defaults for new machines (`defaults.toml`).
    pub fn defaults(&self) -> Result<Settings, LifecycleError> {
        Ok(config::read_defaults(&self.store.paths().defaults_file())?)
    }

    /// Replaces the defaults for new machines after checking them.
    pub fn set_defaults(&self, settings: &Settings) -> Result<(), LifecycleError> {
        settings.validate()?;
        let defaults = Settings {
            version: None,
            ..settings.clone()
        };
        let home = self.store.paths().home();
        std::fs::create_dir_all(home).map_err(|source| StoreError::Io {
            what: "cannot create",
            path: home.to_path_buf(),
            source,
        })?;
        Ok(config::write_defaults(
            &self.store.paths().defaults_file(),
            &defaults,
        )?)
    }
}

/// How [`Lifecycle::stop_with`] ends a machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMode {
    /// Save the VM where the driver can (the next start resumes it), else shut it down.
    Save,
    /// Shut the guest down cleanly and drop any saved state: the next start boots cold.
    Shutdown,
    /// Kill the VM and every process of the machine at once; never saved.
    Force,
}

/// What [`Lifecycle::plan`] says of a machine not yet made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MachinePlan {
    /// The driver setting (`auto`, `vmm`, `qemu`).
    pub driver: String,
    /// What runs the VM (`vmm`, `qemu`).
    pub backend: String,
    /// The accelerator (`kvm`, `hvf`, `whpx`, `tcg` for software emulation).
    pub accel: String,
    /// Why this backend.
    pub reason: String,
    /// Why this accelerator.
    pub accel_reason: String,
    pub arch: String,
    pub cpus: u32,
    pub memory_mib: u32,
    pub disk_size_gib: u32,
}

/// The last `max_bytes` of a file from a line start, and the file's length; a missing
/// file is empty.
pub fn read_tail(path: &Path, max_bytes: u64) -> std::io::Result<(String, u64)> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((String::new(), 0)),
        Err(e) => return Err(e),
    };
    let len = f.metadata()?.len();
    let from = len.saturating_sub(max_bytes);
    f.seek(SeekFrom::Start(from))?;
    let mut buf = Vec::new();
    f.take(len - from).read_to_end(&mut buf)?;
    let mut text = String::from_utf8_lossy(&buf).into_owned();
    if from > 0 {
        if let Some(nl) = text.find('\n') {
            text.drain(..=nl);
        }
    }
    Ok((text, len))
}

/// The bytes of a file from `offset` on (from its start when it is shorter: it was
/// replaced), and its length; a missing file is empty.
pub fn read_from(path: &Path, offset: u64) -> std::io::Result<(Vec<u8>, u64)> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(e) => return Err(e),
    };
    let len = f.metadata()?.len();
    let from = if offset > len { 0 } else { offset };
    f.seek(SeekFrom::Start(from))?;
    let mut buf = Vec::new();
    f.take(len - from).read_to_end(&mut buf)?;
    let end = from + buf.len() as u64;
    Ok((buf, end))
}

/// An error and its sources on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let c = cause.to_string();
        if !s.contains(&c) {
            s.push_str(": ");
            s.push_str(&c);
        }
        source = cause.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DriverKind;
    use crate::paths::Paths;

    fn lifecycle() -> (tempfile::TempDir, Lifecycle) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(Paths::with_roots(
            dir.path().join("home"),
            dir.path().join("cache"),
        ));
        let lc = Lifecycle::new(store, dir.path().join("docker"));
        (dir, lc)
    }

    fn fake() -> Settings {
        Settings {
            driver: Some(DriverKind::Fake),
            cpus: Some(1),
            memory_mib: Some(1024),
            ..Default::default()
        }
    }

    #[test]
    fn test_plan_resolves_the_defaults_before_anything_is_made() {
        let (_dir, lc) = lifecycle();
        lc.set_defaults(&Settings {
            driver: Some(crate::config::DriverKind::Qemu),
            cpus: Some(1),
            ..Settings::default()
        })
        .unwrap();
        let plan = lc
            .plan(&Settings {
                memory_mib: Some(1024),
                ..Settings::default()
            })
            .unwrap();
        assert_eq!(
            (
                plan.driver.as_str(),
                plan.backend.as_str(),
                plan.cpus,
                plan.memory_mib
            ),
            ("qemu", "qemu", 1, 1024)
        );
        assert!(
            !plan.accel.is_empty() && !plan.accel_reason.is_empty(),
            "{plan:?}"
        );
        assert!(lc.store().list().unwrap().is_empty(), "nothing made");
    }

    #[test]
    fn test_fake_machine_lifecycle_with_context() {
        let (_d, lc) = lifecycle();
        lc.create("dev", &fake()).unwrap();
        assert!(docker_context::exists(lc.docker_config(), "rmachine-dev"));
        let mut heard = Vec::new();
        let m = lc.start("dev", &mut |d| heard.push(d.to_string())).unwrap();
        assert_eq!(m.state.state, State::Running);
        assert!(!heard.is_empty());
        assert!(matches!(
            lc.remove("dev", false),
            Err(LifecycleError::Store(StoreError::Busy { .. }))
        ));
        lc.use_machine("dev").unwrap();
        assert_eq!(lc.active_machine().as_deref(), Some("dev"));
        let rows = lc.summaries().unwrap();
        assert!(rows[0].active && rows[0].state == "running" && rows[0].cpus == Some(1));
        assert_eq!(lc.stop("dev", false).unwrap().state.state, State::Stopped);
        lc.remove("dev", false).unwrap();
        assert!(!docker_context::exists(lc.docker_config(), "rmachine-dev"));
        assert_eq!(lc.active_machine(), None);
    }

    #[test]
    fn test_a_saved_state_is_listed_discarded_by_no_save_and_removed_with_the_machine() {
        let (_d, lc) = lifecycle();
        let m = lc.create("dev", &fake()).unwrap();
        std::fs::write(m.files.saved_state(), b"state").unwrap();
        std::fs::write(m.files.saved_header(), b"{ not a header").unwrap();
        let row = lc.summary("dev").unwrap();
        let saved = row.saved_state.expect("listed");
        assert!(saved.damaged.unwrap().contains("damaged"));
        assert!(lc.inspect("dev").unwrap()["saved_state"].is_object());
        // A stopped machine: --no-save drops its state; a plain stop keeps it.
        lc.stop_with("dev", StopMode::Save).unwrap();
        assert!(m.files.saved_header().exists());
        lc.stop_with("dev", StopMode::Shutdown).unwrap();
        assert!(!m.files.saved_header().exists() && !m.files.saved_state().exists());
        assert!(lc.summary("dev").unwrap().saved_state.is_none());
        assert!(!lc.discard_saved("dev").unwrap(), "nothing left to discard");
        std::fs::write(m.files.saved_state(), b"state").unwrap();
        lc.remove("dev", false).unwrap();
        assert!(!m.files.saved_state().exists(), "removed with the machine");
    }

    #[test]
    fn test_broken_machine_is_an_error_row() {
        let (_d, lc) = lifecycle();
        lc.create("dev", &fake()).unwrap();
        std::fs::write(
            lc.store().paths().machine("dev").config(),
            "version = 1\ncpus = [",
        )
        .unwrap();
        let rows = lc.summaries().unwrap();
        assert_eq!(rows[0].state, "error");
        assert!(rows[0]
            .error
            .as_deref()
            .unwrap_or("")
            .contains("machine.toml"));
        lc.remove("dev", true).unwrap();
        assert!(lc.summaries().unwrap().is_empty());
    }

    #[test]
    fn test_log_from_follows_and_restarts_after_a_reset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.log");
        assert_eq!(read_from(&path, 0).unwrap(), (Vec::new(), 0));
        std::fs::write(&path, "boot 1\n").unwrap();
        let (text, len) = read_from(&path, 0).unwrap();
        assert_eq!((text.as_slice(), len), (&b"boot 1\n"[..], 7));
        std::fs::write(&path, "boot 1\nmore\n").unwrap();
        assert_eq!(read_from(&path, len).unwrap(), (b"more\n".to_vec(), 12));
        std::fs::write(&path, "b2\n").unwrap();
        assert_eq!(read_from(&path, 12).unwrap(), (b"b2\n".to_vec(), 3));
    }

    #[test]
    fn test_start_or_create_and_settings_by_key() {
        let (_d, lc) = lifecycle();
        let mut heard = Vec::new();
        let (m, created) = lc
            .start_or_create("dev", &fake(), &mut |d| heard.push(d.to_string()))
            .unwrap();
        assert!(created && m.state.state == State::Running);
        assert!(heard[0].contains("created machine dev"), "{heard:?}");
        assert!(matches!(
            lc.start_or_create("dev", &fake(), &mut |_| {}),
            Err(LifecycleError::SettingsOfExisting { .. })
        ));
        let (_, created) = lc
            .start_or_create("dev", &Settings::default(), &mut |_| {})
            .unwrap();
        assert!(!created);
        assert_eq!(
            lc.set_setting("dev", "memory", "2G")
                .unwrap()
                .spec
                .memory_mib,
            2048
        );
        lc.set_setting("dev", "disk", "80G").unwrap();
        assert!(matches!(
            lc.set_setting("dev", "disk", "20G"),
            Err(LifecycleError::ShrinkDisk { from: 80, to: 20 })
        ));
        assert_eq!(lc.set_default("cpus", "1").unwrap().cpus, Some(1));
        let inspected = lc.inspect("dev").unwrap();
        assert_eq!(inspected["driver"]["kind"], "fake");
        assert_eq!(inspected["settings"]["memory_mib"], 2048);
    }

    #[test]
    fn test_machines_join_and_leave_their_networks() {
        let (_d, lc) = lifecycle();
        let on = |nets: &[&str]| Settings {
            networks: Some(nets.iter().map(|n| n.to_string()).collect()),
            ..fake()
        };
        assert!(matches!(
            lc.create("m1", &on(&["nope"])),
            Err(LifecycleError::Network(
                crate::network::NetworkError::NotFound(_)
            ))
        ));
        assert!(lc.store().load("m1").is_err(), "nothing made");
        lc.networks().create("a", None).unwrap();
        lc.networks().create("b", None).unwrap();
        lc.create("m1", &on(&["a"])).unwrap();
        lc.create("m2", &on(&["a", "b"])).unwrap();
        let a = lc.networks().load("a").unwrap();
        assert_eq!(a.members.keys().collect::<Vec<_>>(), ["m1", "m2"]);
        lc.set_setting("m2", "networks", "b").unwrap();
        assert!(!lc.networks().load("a").unwrap().members.contains_key("m2"));
        assert!(lc.networks().load("b").unwrap().members.contains_key("m2"));
        assert!(lc.networks().remove("b").is_err(), "m2 uses it");
        lc.remove("m2", true).unwrap();
        lc.networks().remove("b").unwrap();
        assert_eq!(lc.store().load("m1").unwrap().spec.networks, ["a"]);
    }

    #[test]
    fn test_log_tail_starts_at_a_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.log");
        assert_eq!(read_tail(&path, 10).unwrap(), (String::new(), 0));
        std::fs::write(&path, "first line\nsecond\nthird\n").unwrap();
        let (text, len) = read_tail(&path, 10).unwrap();
        assert_eq!(len, 24);
        assert_eq!(text, "third\n");
    }

    #[test]
    fn test_defaults_round_trip_and_validation() {
        let (_d, lc) = lifecycle();
        assert_eq!(lc.defaults().unwrap(), Settings::default());
        lc.set_defaults(&Settings {
            cpus: Some(1),
            disk_size_gib: Some(10),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(lc.defaults().unwrap().disk_size_gib, Some(10));
        assert!(lc
            .set_defaults(&Settings {
                disk_size_gib: Some(1),
                ..Default::default()
            })
            .is_err());
        let m = lc.create("dev", &fake()).unwrap();
        assert_eq!(m.spec.disk_size_gib, 10);
    }
}
