//! The ssh driver: an existing Linux host runs the engine. Create prepares the host over
//! SSH (pin its key, probe, install Debian's `docker.io` when allowed, TLS when asked);
//! start and stop act on the local end only: a host agent (`rmachine hostagent NAME`)
//! holds one SSH connection and serves the machine's local `docker.sock` and published
//! ports through it. The remote engine and its containers are never stopped by rmachine.

use super::local::{start_hostagent, LocalDriver};
use super::{Driver, DriverCaps, Endpoints, MachineError, TlsEndpoint};
use crate::config::DriverKind;
use crate::ssh::remote::{self, CreateOptions, RemoteRecord};
use crate::ssh::{self, Auth, Secret, SshError, SshSettings};
use crate::state::State;
use crate::store::Machine;

pub struct SshDriver {
    /// The key's passphrase, asked by the face that runs the operation (never stored).
    passphrase: Option<Secret>,
}

impl SshDriver {
    pub fn new(passphrase: Option<Secret>) -> SshDriver {
        SshDriver { passphrase }
    }

    /// The machine's `[ssh]` settings.
    pub fn settings(machine: &Machine) -> Result<&SshSettings, MachineError> {
        machine
            .spec
            .ssh
            .as_ref()
            .ok_or_else(|| MachineError::StartFailed {
                name: machine.name.clone(),
                reason: "machine.toml has no [ssh] settings".into(),
            })
    }

    /// How this driver logs in to the machine's host.
    pub fn auth(&self, machine: &Machine) -> Result<Auth, MachineError> {
        Ok(Auth {
            key: Self::settings(machine)?.key.clone(),
            passphrase: self.passphrase.clone(),
        })
    }

    fn remote_err(machine: &Machine) -> impl FnOnce(SshError) -> MachineError + '_ {
        move |source| MachineError::Remote {
            name: machine.name.clone(),
            source: Box::new(source),
        }
    }

    /// Prepares the host of a new machine (see [`remote::prepare`]).
    pub fn prepare(
        &self,
        machine: &Machine,
        options: &CreateOptions,
        progress: &mut (dyn FnMut(&str) + Send),
    ) -> Result<RemoteRecord, MachineError> {
        let settings = Self::settings(machine)?;
        let auth = self.auth(machine)?;
        block_on(remote::prepare(
            &machine.files,
            settings,
            &auth,
            options,
            progress,
        ))?
        .map_err(Self::remote_err(machine))
    }

    /// Issues a new server certificate for the host's current names and addresses (after
    /// an address change) and restarts the engine with it; the client certificate stays.
    /// Returns the certificate's names.
    pub fn regenerate_certs(
        &self,
        machine: &Machine,
        progress: &mut (dyn FnMut(&str) + Send),
    ) -> Result<Vec<String>, MachineError> {
        let settings = Self::settings(machine)?;
        if !settings.engine_tls {
            return Err(MachineError::Unsupported {
                driver: "ssh",
                op: "regenerate certificates of a machine created without --engine-tls",
            });
        }
        let auth = self.auth(machine)?;
        let files = &machine.files;
        block_on(async {
            progress(&format!("connecting to {}", settings.target()));
            let c = remote::connect(files, settings, &auth, None, &mut |_| {}).await?;
            let found = ssh::probe::run(&c.session).await?;
            progress("issuing the engine's server certificate; restarting the engine");
            let names =
                ssh::tls::setup(&c.session, files, &found, &settings.target().host, false).await?;
            remote::wait_engine(&c.session).await?;
            if let Some(mut record) = RemoteRecord::read(&files.remote_record()) {
                record.probe = found;
                record.tls_names = names.clone();
                record.write(&files.remote_record())?;
            }
            c.session.disconnect().await;
            Ok::<Vec<String>, SshError>(names)
        })?
        .map_err(Self::remote_err(machine))
    }

    /// Connects with the machine's pin and checks that the engine answers; returns the
    /// engine's version.
    pub fn verify(
        &self,
        machine: &Machine,
        progress: &mut (dyn FnMut(&str) + Send),
    ) -> Result<String, MachineError> {
        let settings = Self::settings(machine)?;
        let auth = self.auth(machine)?;
        block_on(async {
            progress(&format!(
                "connecting to {} (the host key must match the pin)",
                settings.target()
            ));
            let c = remote::connect(&machine.files, settings, &auth, None, &mut |_| {}).await?;
            progress("checking the engine through ssh");
            let version = remote::engine_version(&c.session).await?;
            c.session.disconnect().await;
            Ok::<String, SshError>(version)
        })?
        .map_err(Self::remote_err(machine))
    }

    /// Undoes what rmachine changed on the host (`rm --purge-remote`).
    pub fn purge_remote(
        &self,
        machine: &Machine,
        progress: &mut (dyn FnMut(&str) + Send),
    ) -> Result<(), MachineError> {
        let settings = Self::settings(machine)?;
        let auth = self.auth(machine)?;
        let record = RemoteRecord::read(&machine.files.remote_record()).ok_or_else(|| {
            MachineError::Remote {
                name: machine.name.clone(),
                source: Box::new(SshError::step(
                    "purging the host",
                    format!(
                        "{} is missing: what rmachine changed there is unknown",
                        machine.files.remote_record().display()
                    ),
                )),
            }
        })?;
        block_on(async {
            progress(&format!("connecting to {}", settings.target()));
            let c = remote::connect(&machine.files, settings, &auth, None, &mut |_| {}).await?;
            remote::purge(&c.session, &record, progress).await?;
            c.session.disconnect().await;
            Ok::<(), SshError>(())
        })?
        .map_err(Self::remote_err(machine))
    }
}

/// Runs a future on a runtime of its own (the faces call the library from plain threads).
fn block_on<F: std::future::Future>(f: F) -> Result<F::Output, MachineError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| MachineError::Io {
            what: "cannot start an async runtime for",
            path: "ssh".into(),
            source,
        })?;
    Ok(rt.block_on(f))
}

impl Driver for SshDriver {
    fn kind(&self) -> DriverKind {
        DriverKind::Ssh
    }

    fn capabilities(&self) -> DriverCaps {
        DriverCaps {
            can_start_stop: true,
            local_vm: false,
            remote: true,
        }
    }

    fn create(&self, machine: &Machine) -> Result<(), MachineError> {
        self.prepare(machine, &CreateOptions::default(), &mut |_| {})
            .map(|_| ())
    }

    fn start(&self, machine: &Machine, progress: &mut dyn FnMut(&str)) -> Result<(), MachineError> {
        Self::settings(machine)?;
        start_hostagent(
            machine,
            progress,
            self.passphrase.as_ref().map(|p| p.0.as_str()),
        )
    }

    fn stop(&self, machine: &Machine, _save: bool) -> Result<(), MachineError> {
        // Nothing to save: the engine runs on the ssh host, untouched.
        LocalDriver::new(DriverKind::Ssh).stop(machine, false)
    }

    fn kill(&self, machine: &Machine) -> Result<(), MachineError> {
        LocalDriver::new(DriverKind::Ssh).kill(machine)
    }

    fn remove(&self, _machine: &Machine) -> Result<(), MachineError> {
        Ok(())
    }

    fn state(&self, machine: &Machine) -> State {
        machine.state.state.clone()
    }

    fn endpoints(&self, machine: &Machine) -> Result<Endpoints, MachineError> {
        let settings = Self::settings(machine)?;
        let target = settings.target();
        Ok(Endpoints {
            docker_host: machine.files.docker_endpoint().docker_host(),
            ssh: Some(target.to_string()),
            engine_tls: settings.engine_tls.then(|| TlsEndpoint {
                docker_host: if target.host.contains(':') {
                    format!("tcp://[{}]:{}", target.host, ssh::ENGINE_TLS_PORT)
                } else {
                    format!("tcp://{}:{}", target.host, ssh::ENGINE_TLS_PORT)
                },
                cert_path: machine.files.engine_certs(),
            }),
        })
    }
}
