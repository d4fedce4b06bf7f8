//! `rmachine regenerate-certs NAME`: a new server certificate for an ssh machine's engine
//! (`--engine-tls`) after the host's names or addresses changed; the client certificate
//! (`DOCKER_CERT_PATH`) stays as it is.

use crate::progress::StepProgress;

#[derive(Debug, clap::Args)]
pub struct RegenerateCertsArgs {
    /// Machine name.
    pub name: String,
}

pub fn run(args: RegenerateCertsArgs) -> anyhow::Result<()> {
    let lc = super::create_ssh::with_passphrase(super::lifecycle()?, &args.name)?;
    let progress = std::sync::Mutex::new(StepProgress::new());
    let lock = || {
        progress
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    };
    lock().step(
        1,
        1,
        &format!("regenerating the engine certificate of {}", args.name),
    );
    let names = lc.regenerate_certs(&args.name, &mut |line| lock().detail(line))?;
    lock().done(&format!(
        "the engine of {} has a new server certificate for {}",
        args.name,
        names.join(", ")
    ));
    Ok(())
}
