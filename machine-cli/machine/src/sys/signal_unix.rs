use tokio::signal::unix::{signal, SignalKind};

/// Returns once SIGTERM or SIGINT arrives (never, if neither can be watched).
pub async fn stop_requested() {
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
