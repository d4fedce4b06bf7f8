//! `rmachine logs [console|hostagent|vmm] [NAME] [-f]`.

use std::io::Write;
use std::time::Duration;

use rmachine_machine::lifecycle::LogKind;

use super::DEFAULT_MACHINE;

/// How often a followed log is read again.
const FOLLOW_INTERVAL: Duration = Duration::from_millis(200);

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// The guest's serial console.
    #[default]
    Console,
    /// The host agent.
    Hostagent,
    /// The VM process (rmachine-vmm or QEMU).
    Vmm,
}

impl From<Kind> for LogKind {
    fn from(kind: Kind) -> LogKind {
        match kind {
            Kind::Console => LogKind::Console,
            Kind::Hostagent => LogKind::Hostagent,
            Kind::Vmm => LogKind::Vmm,
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct LogsArgs {
    /// Which log.
    #[arg(value_enum, default_value_t)]
    pub kind: Kind,
    /// Machine name.
    #[arg(default_value = DEFAULT_MACHINE)]
    pub name: String,
    /// Keep printing what is appended.
    #[arg(long, short)]
    pub follow: bool,
}

pub fn run(args: LogsArgs) -> anyhow::Result<()> {
    let lc = super::lifecycle()?;
    let kind = LogKind::from(args.kind);
    let mut out = std::io::stdout().lock();
    let (bytes, mut offset) = lc.log_from(&args.name, kind, 0)?;
    if bytes.is_empty() && offset == 0 && !args.follow {
        eprintln!("no {} log yet", format!("{:?}", args.kind).to_lowercase());
        return Ok(());
    }
    out.write_all(&bytes)?;
    out.flush()?;
    if !args.follow {
        return Ok(());
    }
    loop {
        std::thread::sleep(FOLLOW_INTERVAL);
        let (bytes, len) = lc.log_from(&args.name, kind, offset)?;
        offset = len;
        out.write_all(&bytes)?;
        out.flush()?;
    }
}
