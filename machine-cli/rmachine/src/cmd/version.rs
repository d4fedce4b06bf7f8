//! `rmachine version`: this build's version (the CLI's, the VMM's and the desktop's), the
//! rmachine-vmm it would run (asked for its own), the agent protocol and the images.

use rmachine_machine::paths::Paths;
use rmachine_machine::version::{self, Report};

use super::Format;

#[derive(Debug, clap::Args)]
pub struct VersionArgs {
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    format: Format,
}

pub fn run(args: VersionArgs) -> anyhow::Result<()> {
    // Without a home folder the images cannot be listed; the versions still print.
    let report = match Paths::from_env() {
        Ok(paths) => version::report(Some(&paths)),
        Err(e) => {
            let mut report = version::report(None);
            report.problems.push(format!("images: {e}"));
            report
        }
    };
    match args.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Format::Table => print_table(&report),
    }
    Ok(())
}

fn print_table(report: &Report) {
    println!("rmachine {}", report.version);
    match &report.vmm {
        Some(vmm) => match (&vmm.version, &vmm.error) {
            (Some(v), _) if vmm.matches() => {
                println!("rmachine-vmm {v} ({})", vmm.path.display())
            }
            (Some(v), _) => println!(
                "rmachine-vmm {v} ({}): not this rmachine's version; install both from one release",
                vmm.path.display()
            ),
            (None, error) => println!(
                "rmachine-vmm ? ({}): {}",
                vmm.path.display(),
                error.as_deref().unwrap_or("no answer")
            ),
        },
        None => println!("rmachine-vmm not installed (machines run under QEMU)"),
    }
    for tool in &report.host_tools {
        match &tool.binary {
            Some(binary) => println!("{} {}", tool.name, binary.display()),
            None => println!("{} not installed (`rmachine setup` fetches it)", tool.name),
        }
    }
    println!("agent protocol {}", report.protocol);
    if report.images.is_empty() {
        println!("images: none installed");
    }
    for image in &report.images {
        let m = &image.manifest;
        let note = match image.usable() {
            true => String::new(),
            false => format!(", protocol {}: not booted", m.protocol),
        };
        println!(
            "image {} ({}, {}{note}) {}",
            m.version,
            m.arch,
            image.source,
            image.dir.display()
        );
    }
    for problem in &report.problems {
        eprintln!("warning: {problem}");
    }
}
