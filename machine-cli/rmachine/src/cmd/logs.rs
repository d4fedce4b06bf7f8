//! `rmachine logs [console|hostagent|vmm] [NAME] [-f]`.

use std::io::{Read, Seek, SeekFrom, Write};
use std::time::Duration;

use super::DEFAULT_MACHINE;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogKind {
    /// The guest's serial console.
    #[default]
    Console,
    /// The host agent.
    Hostagent,
    /// The VM process (rmachine-vmm or QEMU).
    Vmm,
}

#[derive(Debug, clap::Args)]
pub struct LogsArgs {
    /// Which log.
    #[arg(value_enum, default_value_t)]
    pub kind: LogKind,
    /// Machine name.
    #[arg(default_value = DEFAULT_MACHINE)]
    pub name: String,
    /// Keep printing what is appended.
    #[arg(long, short)]
    pub follow: bool,
}

pub fn run(args: LogsArgs) -> anyhow::Result<()> {
    let m = super::load(&args.name)?;
    let path = match args.kind {
        LogKind::Console => m.files.console_log(),
        LogKind::Hostagent => m.files.hostagent_log(),
        LogKind::Vmm => m.files.vmm_log(),
    };
    let mut file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !args.follow => {
            eprintln!(
                "no {} log yet ({})",
                format!("{:?}", args.kind).to_lowercase(),
                path.display()
            );
            return Ok(());
        }
        Err(e) => {
            return Err(anyhow::Error::new(e).context(format!("cannot open {}", path.display())))
        }
    };
    let mut out = std::io::stdout().lock();
    let mut buf = Vec::new();
    file.read_to_end(&mut buf)?;
    out.write_all(&buf)?;
    out.flush()?;
    if !args.follow {
        return Ok(());
    }
    let mut pos = buf.len() as u64;
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        if len < pos {
            // The log was reset (a new boot): start from its beginning.
            pos = 0;
        }
        if len > pos {
            file = std::fs::File::open(&path)?;
            file.seek(SeekFrom::Start(pos))?;
            buf.clear();
            file.read_to_end(&mut buf)?;
            pos += buf.len() as u64;
            out.write_all(&buf)?;
            out.flush()?;
        }
    }
}
