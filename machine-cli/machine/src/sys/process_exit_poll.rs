use std::time::Duration;

use super::ProcessId;

/// How often the process is looked at.
const POLL: Duration = Duration::from_millis(500);

/// Looks at the process every half second until it has ended.
pub(super) async fn exited(id: &ProcessId) {
    while id.is_alive() {
        tokio::time::sleep(POLL).await;
    }
}
