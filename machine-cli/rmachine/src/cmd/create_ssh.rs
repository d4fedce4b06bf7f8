//! `rmachine create NAME --driver ssh --ssh-host user@host[:port]`: an existing Linux
//! host as a machine (flags here, the work in `machine::ssh`), and the passphrase of an
//! encrypted ssh key, asked once per command on the terminal and never stored.

use anyhow::bail;
use rmachine_machine::config::{DriverKind, Settings};
use rmachine_machine::docker_context;
use rmachine_machine::lifecycle::Lifecycle;
use rmachine_machine::ssh::remote::CreateOptions;
use rmachine_machine::ssh::{self, host_key, Auth, InstallMode, Secret, SshSettings, SshTarget};

use crate::progress::StepProgress;

/// Flags of an ssh machine.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct SshArgs {
    /// The existing Linux host of an ssh machine: user@host[:port] (implies --driver ssh).
    #[arg(long, value_parser = SshTarget::parse)]
    pub ssh_host: Option<SshTarget>,
    /// Private key to log in with, after the ssh-agent's keys (default: ~/.ssh/id_ed25519,
    /// id_ecdsa, id_rsa).
    #[arg(long, requires = "ssh_host")]
    pub ssh_key: Option<std::path::PathBuf>,
    /// The host key's SHA256 fingerprint (`ssh-keygen -lf`), for scripts: any other key is
    /// refused instead of being pinned on first use.
    #[arg(long, requires = "ssh_host", value_parser = host_key::parse_fingerprint)]
    pub ssh_host_key: Option<String>,
    /// Install Debian's docker.io through the host's apt when it has no engine (auto), or
    /// adopt the host as it is (never).
    #[arg(long, requires = "ssh_host", value_parser = InstallMode::parse)]
    pub install: Option<InstallMode>,
    /// Also make the engine listen on 2376 with mutual TLS (a CA of this machine;
    /// `rmachine env` then prints DOCKER_HOST=tcp://…, DOCKER_TLS_VERIFY, DOCKER_CERT_PATH).
    #[arg(long, requires = "ssh_host")]
    pub engine_tls: bool,
    /// Allow restarting an engine that already runs (--engine-tls needs it).
    #[arg(long, requires = "ssh_host")]
    pub restart_engine: bool,
}

impl SshArgs {
    /// Whether these flags ask for an ssh machine.
    pub fn wanted(&self, driver: Option<DriverKind>) -> bool {
        self.ssh_host.is_some() || driver == Some(DriverKind::Ssh)
    }
}

/// Asks for the key's passphrase when logging in needs one (an encrypted key the
/// ssh-agent does not hold).
pub fn ask_passphrase(auth: &Auth) -> anyhow::Result<Option<Secret>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let Some(key) = rt.block_on(ssh::session::passphrase_needed(auth)) else {
        return Ok(None);
    };
    match crate::terminal::read_secret(&format!("Passphrase for {}: ", key.display()))? {
        Some(p) => Ok(Some(Secret(p))),
        None => bail!(
            "the key {} is encrypted and there is no terminal to ask its passphrase on: load it into your ssh-agent (`ssh-add {}`)",
            key.display(),
            key.display()
        ),
    }
}

/// `lc` with the passphrase of machine `name`'s key when it is an ssh machine that needs
/// one.
pub fn with_passphrase(lc: Lifecycle, name: &str) -> anyhow::Result<Lifecycle> {
    let Some(settings) = lc.store().load(name).ok().and_then(|m| m.spec.ssh.clone()) else {
        return Ok(lc);
    };
    let passphrase = ask_passphrase(&Auth {
        key: settings.key.clone(),
        passphrase: None,
    })?;
    Ok(lc.with_ssh_passphrase(passphrase))
}

pub fn run(name: &str, base: &Settings, args: &SshArgs) -> anyhow::Result<()> {
    if base.driver.is_some_and(|d| d != DriverKind::Ssh) {
        bail!("--ssh-host is for --driver ssh machines");
    }
    let Some(target) = args.ssh_host.clone() else {
        bail!("--driver ssh needs the host: --ssh-host user@host[:port]");
    };
    if base.cpus.is_some() || base.memory_mib.is_some() || base.disk_size_gib.is_some() {
        bail!("--cpus, --memory and --disk are the host's own for an ssh machine");
    }
    let ssh_settings = SshSettings {
        port: (target.port != ssh::DEFAULT_PORT).then_some(target.port),
        host: target.host,
        user: target.user,
        key: args.ssh_key.clone(),
        install: args.install.unwrap_or_default(),
        engine_tls: args.engine_tls,
    };
    let settings = Settings {
        driver: Some(DriverKind::Ssh),
        image: None,
        mounts: Some(Vec::new()),
        ssh: Some(ssh_settings.clone()),
        ..base.clone()
    };
    let passphrase = ask_passphrase(&Auth {
        key: ssh_settings.key.clone(),
        passphrase: None,
    })?;
    let lc = super::lifecycle()?.with_ssh_passphrase(passphrase);
    let progress = std::sync::Mutex::new(StepProgress::new());
    let lock = || {
        progress
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    };
    lock().step(
        1,
        1,
        &format!("creating machine {name} on {}", ssh_settings.target()),
    );
    let options = CreateOptions {
        host_key: args.ssh_host_key.clone(),
        restart_engine: args.restart_engine,
    };
    let (machine, record) = lc.create_ssh(name, &settings, &options, &mut |line| {
        // The host key's pin is said for good, not as a passing detail.
        if line.starts_with("host key ") {
            lock().println(line);
        } else {
            lock().detail(line);
        }
    })?;
    let engine = record.engine_version.as_deref().unwrap_or("unknown");
    let how = if !record.installed.is_empty() {
        format!("installed {}", record.installed.join(" "))
    } else if record.adopted {
        "adopted the running engine as it is".to_string()
    } else {
        "engine found".to_string()
    };
    lock().done(&format!(
        "created machine {} on {} ({} on {}; Docker {engine}; {how})",
        machine.name,
        ssh_settings.target(),
        record.probe.os.pretty_name,
        record.probe.arch
    ));
    println!(
        "docker context {} (start the tunnel with `rmachine start {}`)",
        docker_context::context_name(&machine.name),
        machine.name
    );
    Ok(())
}
