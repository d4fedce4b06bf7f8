//! `rmachine shell [NAME] [-- CMD...]`: a root login shell in the guest, or a command,
//! through the agent's exec service.
//!
//! With a terminal on both stdin and stdout (or `-t`), the command runs on a terminal in
//! the guest: the local terminal is put in raw mode (restored on every way out), keys go
//! through untouched (Ctrl-C is a byte the guest's terminal turns into SIGINT), and
//! window size changes follow. Otherwise it runs with pipes: stdin, stdout and stderr
//! stay separate and binary-safe, and Ctrl-C here is forwarded as SIGINT. Either way
//! `rmachine shell` exits with the command's exit code.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Read, Write};

use anyhow::Context as _;
use rmachine_machine::exec::{self, ExecError};
use rmachine_protocol::exec::{ExecRequest, GuestFrame};
use tokio::sync::mpsc;

use super::{ExitWith, DEFAULT_MACHINE};
use crate::terminal::{self, Event};

/// After this many forwarded signals the command is given up on and `shell` exits.
const SIGNALS_BEFORE_GIVING_UP: u32 = 3;

#[derive(Debug, clap::Args)]
pub struct ShellArgs {
    /// Machine name.
    #[arg(default_value = DEFAULT_MACHINE)]
    pub name: String,
    /// Command and arguments to run instead of a login shell (after `--`).
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
    /// Run on a terminal even when stdin or stdout is not one.
    #[arg(short = 't', long, conflicts_with = "no_tty")]
    pub tty: bool,
    /// Never run on a terminal (output stays byte for byte, stderr separate).
    #[arg(short = 'T', long)]
    pub no_tty: bool,
    /// Working directory in the guest (default: /root).
    #[arg(short = 'w', long, value_name = "DIR")]
    pub workdir: Option<String>,
    /// Set a variable in the command's environment (repeatable).
    #[arg(short = 'e', long = "env", value_name = "NAME=VALUE")]
    pub env: Vec<String>,
}

pub fn run(args: ShellArgs) -> anyhow::Result<()> {
    let m = super::load(&args.name)?;
    if let Some(ssh) = &m.spec.ssh {
        anyhow::bail!(
            "machine {} is an ssh machine: use ssh itself (`ssh {}`); `rmachine shell` and `cp` reach the guest agent of a VM",
            m.name,
            ssh.target()
        );
    }
    let carrier = m.running_carrier()?;
    let stdin_tty = std::io::stdin().is_terminal();
    let tty = args.tty || (!args.no_tty && stdin_tty && std::io::stdout().is_terminal());
    let mut env = BTreeMap::new();
    for pair in &args.env {
        let (name, value) = pair
            .split_once('=')
            .with_context(|| format!("--env {pair:?} is not NAME=VALUE"))?;
        env.insert(name.to_string(), value.to_string());
    }
    let (rows, cols) = if tty {
        terminal::size().unwrap_or((0, 0))
    } else {
        (0, 0)
    };
    if tty {
        let term = std::env::var("TERM")
            .ok()
            .filter(|t| !t.is_empty() && t != "dumb");
        env.entry("TERM".into())
            .or_insert_with(|| term.unwrap_or_else(|| "xterm-256color".into()));
    }
    let request = ExecRequest {
        argv: args.command,
        tty,
        rows,
        cols,
        env,
        cwd: args.workdir,
    };
    request.validate()?;

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // Raw mode only once the session is open, and restored when the guard drops: on
    // return, on error and on panic.
    let (code, message) = rt.block_on(async {
        let (input, output) = exec::open(&carrier, &request)
            .await
            .with_context(|| format!("cannot reach machine {}", m.name))?;
        let _raw = if tty && stdin_tty {
            Some(terminal::RawMode::enter().context("cannot put the terminal in raw mode")?)
        } else {
            None
        };
        relay(input, output, tty).await
    })?;
    // The stdin thread may still be blocked in a read: it ends with the process.
    drop(rt);
    // After the terminal is restored.
    if let Some(message) = message {
        eprintln!("rmachine: {message}");
    }
    match u8::try_from(code) {
        Ok(0) => Ok(()),
        Ok(code) => Err(ExitWith(code).into()),
        // Codes outside 0..=255 (none from a real process): what a shell would see.
        Err(_) => Err(ExitWith((code & 0xff) as u8).into()),
    }
}

/// Relays stdin, signals and window sizes out and output in, until the exit code; returns
/// it with the agent's error message, if any.
async fn relay(
    mut input: exec::ExecInput,
    mut output: exec::ExecOutput,
    tty: bool,
) -> anyhow::Result<(i32, Option<String>)> {
    let mut stdin = read_stdin();
    let mut stdin_open = true;
    let mut events = terminal::watch(tty).context("cannot watch the terminal and signals")?;
    let mut forwarded = 0u32;
    let mut stdout = std::io::stdout();
    let mut stderr = std::io::stderr();
    let mut error = None;
    loop {
        tokio::select! {
            frame = output.next() => match frame? {
                Some(GuestFrame::Stdout(data)) => {
                    stdout.write_all(&data)?;
                    stdout.flush()?;
                }
                Some(GuestFrame::Stderr(data)) => {
                    stderr.write_all(&data)?;
                    stderr.flush()?;
                }
                // Printed once the terminal is restored.
                Some(GuestFrame::Error(message)) => error = Some(message),
                Some(GuestFrame::Exit(code)) => return Ok((code, error)),
                None => return Err(match error {
                    Some(message) => ExecError::Refused(message).into(),
                    None => ExecError::NoExit.into(),
                }),
            },
            chunk = stdin.recv(), if stdin_open => match chunk {
                Some(data) if !data.is_empty() => input.stdin(&data).await?,
                _ => {
                    stdin_open = false;
                    input.close_stdin().await?;
                }
            },
            Some(event) = events.recv() => match event {
                Event::Resized => {
                    if let Some((rows, cols)) = terminal::size() {
                        input.resize(rows, cols).await?;
                    }
                }
                Event::Signal(number) => {
                    forwarded += 1;
                    if forwarded >= SIGNALS_BEFORE_GIVING_UP {
                        eprintln!("rmachine: giving up on the command after {forwarded} signals");
                        return Ok((128 + i32::from(number), None));
                    }
                    input.signal(number).await?;
                }
                // A hung-up terminal: leave, and the agent hangs up the session in the guest.
                Event::HangUp => return Ok((128 + 1, None)),
            },
        }
    }
}

/// Reads stdin on a thread of its own (a blocking read cannot be cancelled, and the
/// runtime must not wait for it at exit). An empty chunk or a closed channel is EOF.
fn read_stdin() -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel(4);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => {
                    let _ = tx.blocking_send(Vec::new());
                    return;
                }
                Ok(n) => {
                    if tx.blocking_send(buf[..n].to_vec()).is_err() {
                        return;
                    }
                }
            }
        }
    });
    rx
}
