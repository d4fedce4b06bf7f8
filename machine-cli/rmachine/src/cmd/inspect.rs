//! `rmachine inspect [NAME]`: everything about a machine as JSON, including which
//! backend runs (or would run) it and why.

use rmachine_machine::docker_context;
use rmachine_machine::driver::choose_backend;
use serde_json::json;

use super::DEFAULT_MACHINE;

#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// Machine name.
    #[arg(default_value = DEFAULT_MACHINE)]
    pub name: String,
}

pub fn run(args: InspectArgs) -> anyhow::Result<()> {
    let m = super::load(&args.name)?;
    let driver = rmachine_machine::driver::for_machine(&m);
    let choice = choose_backend(m.spec.driver);
    let mut state = serde_json::to_value(&m.state)?;
    // The token is a secret: inspect shows that there is one, not what it is.
    if let Some(token) = state.pointer_mut("/carrier/token") {
        *token = json!("(hidden)");
    }
    let out = json!({
        "name": m.name,
        "settings": m.spec,
        "state": state,
        "driver": {
            "kind": driver.kind().as_str(),
            "capabilities": driver.capabilities(),
            "backend": m.state.backend.clone().unwrap_or_else(|| choice.backend.as_str().to_string()),
            "accel": choice.accel.as_str(),
            "reason": m.state.backend_reason.clone().unwrap_or(choice.reason),
        },
        "endpoints": driver.endpoints(&m)?,
        "docker_context": docker_context::context_name(&m.name),
        "files": {
            "dir": m.files.dir(),
            "config": m.files.config(),
            "data_disk": m.files.data_disk(),
            "docker_socket": m.files.docker_socket(),
            "console_log": m.files.console_log(),
            "hostagent_log": m.files.hostagent_log(),
            "vmm_log": m.files.vmm_log(),
        },
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}
