use tokio::signal::windows::{ctrl_break, ctrl_c, ctrl_close};

/// Returns once Ctrl-C, Ctrl-Break or the console's closing arrives (never, if none can be
/// watched).
pub async fn stop_requested() {
    let (Ok(mut c), Ok(mut b), Ok(mut close)) = (ctrl_c(), ctrl_break(), ctrl_close()) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = c.recv() => {}
        _ = b.recv() => {}
        _ = close.recv() => {}
    }
}
