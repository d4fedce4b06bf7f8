//! `rmachine`: one command for guest images and Docker machines.
#![forbid(unsafe_code)]

mod cmd;
mod progress;
mod terminal;

use clap::{CommandFactory, Parser, Subcommand};

/// rmachine: a Docker engine in a microVM, used from the plain `docker` CLI.
#[derive(Debug, Parser)]
#[command(name = "rmachine", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a machine (default: `default`) without starting it.
    Create(cmd::create::CreateArgs),
    /// Start a machine, creating `default` when no name is given and none exists; a machine
    /// `rmachine stop` saved is resumed (else it boots cold and says why).
    Start(cmd::start::StartArgs),
    /// Stop a machine: saved where the driver can (the next start resumes it), else shut
    /// down cleanly.
    Stop(cmd::stop::StopArgs),
    /// Shut a machine down (not saved) and start it again.
    Restart(cmd::restart::RestartArgs),
    /// Remove machines with their data disks and docker contexts.
    #[command(alias = "remove")]
    Rm(cmd::rm::RmArgs),
    /// List machines.
    #[command(alias = "list")]
    Ls(cmd::ls::LsArgs),
    /// Everything about a machine, as JSON.
    Inspect(cmd::inspect::InspectArgs),
    /// A machine's state and published ports.
    Status(cmd::status::StatusArgs),
    /// The guest's IP address.
    Ip(cmd::ip::IpArgs),
    /// A root shell in a machine, or a command run there (`rmachine shell NAME -- CMD...`).
    #[command(after_help = "Examples:\n  \
        rmachine shell                             a login shell in `default`\n  \
        rmachine shell dev -- uname -a             a command; exits with its status\n  \
        rmachine shell -T -- tar -cf - /etc > x    binary-safe output\n\n\
        A terminal is used when stdin and stdout are terminals (-t forces one, -T none).")]
    Shell(cmd::shell::ShellArgs),
    /// Copy files and folders between the host and a machine.
    #[command(after_help = cmd::cp::AFTER_HELP)]
    Cp(cmd::cp::CpArgs),
    /// Print the environment that points docker at a machine.
    Env(cmd::env::EnvArgs),
    /// Re-issue an ssh machine's engine server certificate (--engine-tls; after the host's
    /// address changed).
    RegenerateCerts(cmd::regenerate_certs::RegenerateCertsArgs),
    /// Write an ssh machine's settings and host key pin to a file (for `rmachine import`).
    Export(cmd::export::ExportArgs),
    /// Recreate an exported ssh machine here.
    Import(cmd::import::ImportArgs),
    /// Make a machine's docker context the current one.
    Use(cmd::use_context::UseArgs),
    /// Print a machine's console, host agent or VM log.
    Logs(cmd::logs::LogsArgs),
    /// Networks between machines: create, ls, inspect, rm.
    #[command(subcommand)]
    Network(cmd::network::NetworkCommand),
    /// Get or set machine settings (applied at the next start).
    #[command(subcommand)]
    Config(cmd::config::ConfigCommand),
    /// Install the docker CLI (if missing) and its compose and buildx plugins.
    Setup(cmd::setup::SetupArgs),
    /// Build, list and remove guest images.
    #[command(subcommand)]
    Image(cmd::image::ImageCommand),
    /// Print the versions of rmachine and its agent protocol.
    Version(cmd::version::VersionArgs),
    /// Print the shell completion script (bash, zsh, fish or powershell).
    Completion(cmd::completion::CompletionArgs),
    /// Run a network's switch (started by a host agent).
    #[command(hide = true)]
    NetworkSwitch(cmd::network_switch::NetworkSwitchArgs),
    /// Run a machine's host agent (started by `rmachine start`).
    #[command(hide = true)]
    Hostagent(cmd::hostagent::HostAgentArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Create(a) => cmd::create::run(a),
        Command::Start(a) => cmd::start::run(a),
        Command::Stop(a) => cmd::stop::run(a),
        Command::Restart(a) => cmd::restart::run(a),
        Command::Rm(a) => cmd::rm::run(a),
        Command::Export(a) => cmd::export::run(a),
        Command::Import(a) => cmd::import::run(a),
        Command::RegenerateCerts(a) => cmd::regenerate_certs::run(a),
        Command::Ls(a) => cmd::ls::run(a),
        Command::Inspect(a) => cmd::inspect::run(a),
        Command::Status(a) => cmd::status::run(a),
        Command::Ip(a) => cmd::ip::run(a),
        Command::Shell(a) => cmd::shell::run(a),
        Command::Cp(a) => cmd::cp::run(a),
        Command::Env(a) => cmd::env::run(a),
        Command::Use(a) => cmd::use_context::run(a),
        Command::Logs(a) => cmd::logs::run(a),
        Command::Network(c) => cmd::network::run(c),
        Command::Config(c) => cmd::config::run(c),
        Command::Setup(a) => cmd::setup::run(a),
        Command::Image(c) => cmd::image::run(c),
        Command::Version(a) => cmd::version::run(a),
        Command::Completion(a) => cmd::completion::run(a, &mut Cli::command()),
        Command::NetworkSwitch(a) => cmd::network_switch::run(a),
        Command::Hostagent(a) => cmd::hostagent::run(a),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        // The status of a command run in the guest, which printed its own messages.
        Err(e) if e.is::<cmd::ExitWith>() => {
            std::process::ExitCode::from(e.downcast_ref::<cmd::ExitWith>().map_or(1, |c| c.0))
        }
        Err(e) => {
            eprintln!("rmachine: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_command_definitions_pass_clap_checks() {
        // clap checks a command's definition only when it is parsed in a debug build
        // (`image rm` once panicked there: an argument named `version` clashed with
        // `--version`); this checks every subcommand at once.
        Cli::command().debug_assert();
    }
}
