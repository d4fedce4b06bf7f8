//! Forwarding host sockets to a guest service: each accepted connection gets its own
//! guest connection and the bytes are spliced both ways, half-closes included, so HTTP
//! upgrades and hijacked streams (attach, `exec -it`, `logs -f`) pass untouched.

use std::sync::Arc;

use rmachine_protocol::Service;
use tokio::io::AsyncWriteExt;

use crate::guest_link::Carrier;
use crate::sys::local_socket::LocalListener;

/// Accepts on `listener` until the task is dropped, forwarding each connection to
/// `service` over `carrier`.
pub async fn serve(mut listener: LocalListener, carrier: Arc<Carrier>, service: Service) {
    loop {
        let mut client = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed on the {service} socket");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let carrier = carrier.clone();
        tokio::spawn(async move {
            match carrier.connect(service).await {
                Ok(mut guest) => {
                    if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut guest).await {
                        tracing::debug!(error = %e, "{service} connection ended");
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot reach the guest's {service} service");
                    let _ = client.shutdown().await;
                }
            }
        });
    }
}
