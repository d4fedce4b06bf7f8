//! `rmachine`: one command for guest images and Docker machines.
#![forbid(unsafe_code)]

mod cmd;
mod progress;

use clap::{Parser, Subcommand};

/// rmachine: a Docker engine in a microVM, used from the plain `docker` CLI.
#[derive(Debug, Parser)]
#[command(name = "rmachine", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Build, list and remove guest images.
    #[command(subcommand)]
    Image(cmd::image::ImageCommand),
    /// Print the versions of rmachine and its agent protocol.
    Version(cmd::version::VersionArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Image(c) => cmd::image::run(c),
        Command::Version(a) => cmd::version::run(a),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rmachine: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
