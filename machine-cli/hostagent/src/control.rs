//! `hostagent.sock`: status, stop and sync-time for the CLI and the desktop app.

use std::sync::Arc;

use anyhow::Context;
use rmachine_machine::hostagent_api::{HostAgentReply, HostAgentRequest};
use rmachine_machine::store::Machine;
use rmachine_machine::sys::local_socket::LocalListener;
use rmachine_protocol::line::{read_line_limited, Line, MAX_CONTROL_LINE};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

use crate::{SharedState, StopReason};

pub(crate) fn serve(
    machine: &Machine,
    state: SharedState,
    stop_tx: mpsc::Sender<StopReason>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let endpoint = machine.files.hostagent_endpoint();
    let mut listener =
        LocalListener::bind(&endpoint).with_context(|| format!("cannot listen on {endpoint}"))?;
    let state = Arc::new(state);
    Ok(tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok(stream) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed on the host agent's socket");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let state = state.clone();
            let stop_tx = stop_tx.clone();
            tokio::spawn(async move {
                let (read, mut write) = tokio::io::split(stream);
                let mut read = BufReader::new(read);
                while let Ok(line) = read_line_limited(&mut read, MAX_CONTROL_LINE).await {
                    let reply = match line {
                        Line::Eof => break,
                        Line::TooLong { .. } => HostAgentReply::Error {
                            message: "request too long".into(),
                        },
                        Line::Data(bytes) => handle(&bytes, &state, &stop_tx).await,
                    };
                    let mut text = serde_json::to_string(&reply).expect("reply serializes");
                    text.push('\n');
                    if write.write_all(text.as_bytes()).await.is_err() {
                        break;
                    }
                }
            });
        }
    }))
}

async fn handle(
    bytes: &[u8],
    state: &SharedState,
    stop_tx: &mpsc::Sender<StopReason>,
) -> HostAgentReply {
    let request: HostAgentRequest = match serde_json::from_slice(bytes) {
        Ok(r) => r,
        Err(e) => {
            return HostAgentReply::Error {
                message: format!("bad request: {e}"),
            }
        }
    };
    match request {
        HostAgentRequest::Status => HostAgentReply::Status {
            state: Box::new(state.snapshot()),
        },
        HostAgentRequest::Stop { save } => {
            let _ = stop_tx.send(StopReason::Requested { save }).await;
            HostAgentReply::Stopping
        }
        HostAgentRequest::SyncTime => match state.snapshot().carrier {
            Some(carrier) => match crate::sync_time(&carrier).await {
                Ok(offset_ns) => HostAgentReply::TimeSynced { offset_ns },
                Err(e) => HostAgentReply::Error {
                    message: format!("{e:#}"),
                },
            },
            None => HostAgentReply::Error {
                message: "the guest is not up yet".into(),
            },
        },
    }
}
