//! Host-side changes in shared folders, for file watchers in containers.
//!
//! virtio-fs cannot tell the guest kernel that the host changed a file, so inotify in a
//! container hears nothing of a host edit (a dev server would not reload). The host agent
//! watches, with the host's own inotify, the folders that running containers bind from the
//! shared folders (not whole shares: the default share is the home folder), collects the
//! changed paths for a short moment and hands them to a notifier, which asks the guest
//! agent to replay them (`notify_changed`: the guest then raises the events itself).
//!
//! Forwarded: creations, content changes, renames and removals. Not forwarded: attribute
//! changes, opens and closes, which is also what the guest's replay causes on the host, so
//! a replay never echoes back.
//!
//! The [`crate::Publisher`] reports which container binds what ([`BindEvent`]) from the
//! engine's event stream it already follows.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::Duration;

use notify::event::{EventKind, ModifyKind};
use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use rmachine_protocol::control::MAX_CHANGED_PATHS;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// How long changes are collected before they are sent (an editor's save is several
/// events; a `git checkout` many).
pub const COLLECT_FOR: Duration = Duration::from_millis(50);

/// Most bytes of paths in one notification (the control line limit is 64 KiB).
const MAX_BATCH_BYTES: usize = 48 * 1024;

/// Which container binds which host paths, as the publisher learns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BindEvent {
    /// Every running container and its bind sources (after (re)connecting to the engine).
    Resync(Vec<(String, Vec<PathBuf>)>),
    /// A container started with these bind sources.
    Started { id: String, sources: Vec<PathBuf> },
    /// A container stopped or is gone.
    Stopped { id: String },
}

/// Sends one batch of changed paths to the guest.
pub type Notifier = Box<
    dyn Fn(Vec<String>) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync,
>;

/// The folders (or files) to watch: bind sources inside a share, without those inside
/// another one already watched.
pub fn watch_roots<'a>(
    sources: impl IntoIterator<Item = &'a PathBuf>,
    shares: &[PathBuf],
) -> BTreeSet<PathBuf> {
    let inside: BTreeSet<PathBuf> = sources
        .into_iter()
        .filter(|s| s.is_absolute() && shares.iter().any(|share| s.starts_with(share)))
        .cloned()
        .collect();
    inside
        .iter()
        .filter(|p| {
            !inside
                .iter()
                .any(|other| other != *p && p.starts_with(other))
        })
        .cloned()
        .collect()
}

/// Whether a host event is one the guest should hear of.
pub fn forwarded(kind: &EventKind) -> bool {
    match kind {
        EventKind::Create(_) | EventKind::Remove(_) => true,
        EventKind::Modify(ModifyKind::Data(_) | ModifyKind::Name(_) | ModifyKind::Any) => true,
        EventKind::Modify(_) | EventKind::Access(_) | EventKind::Any | EventKind::Other => false,
    }
}

/// Splits changed paths into notifications: each at most [`MAX_CHANGED_PATHS`] paths and
/// [`MAX_BATCH_BYTES`]. When more changed at once, their folders are sent instead (a
/// watcher of the folder rescans it).
pub fn batches(paths: BTreeSet<PathBuf>) -> Vec<Vec<String>> {
    let too_many = |set: &BTreeSet<PathBuf>| set.len() > 4 * MAX_CHANGED_PATHS;
    let paths = if too_many(&paths) {
        paths
            .iter()
            .map(|p| {
                p.parent()
                    .map(Path::to_path_buf)
                    .unwrap_or_else(|| p.clone())
            })
            .collect()
    } else {
        paths
    };
    let mut out = Vec::new();
    let mut current: Vec<String> = Vec::new();
    let mut bytes = 0;
    for path in paths {
        let Some(text) = path.to_str().map(str::to_string) else {
            continue;
        };
        if current.len() == MAX_CHANGED_PATHS || bytes + text.len() > MAX_BATCH_BYTES {
            out.push(std::mem::take(&mut current));
            bytes = 0;
        }
        bytes += text.len() + 4;
        current.push(text);
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// What is watched, by whom.
struct Watches {
    shares: Vec<PathBuf>,
    containers: HashMap<String, Vec<PathBuf>>,
    watched: BTreeSet<PathBuf>,
}

impl Watches {
    /// Brings the watcher's set to what the running containers bind.
    fn apply(&mut self, watcher: &mut RecommendedWatcher) {
        let want = watch_roots(self.containers.values().flatten(), &self.shares);
        for gone in self.watched.difference(&want).cloned().collect::<Vec<_>>() {
            if let Err(e) = watcher.unwatch(&gone) {
                debug!(path = %gone.display(), error = %e, "cannot unwatch (already gone?)");
            }
            self.watched.remove(&gone);
            info!(path = %gone.display(), "no longer watching for host changes");
        }
        for new in want.difference(&self.watched).cloned().collect::<Vec<_>>() {
            let mode = if new.is_dir() {
                RecursiveMode::Recursive
            } else {
                RecursiveMode::NonRecursive
            };
            match watcher.watch(&new, mode) {
                Ok(()) => {
                    info!(path = %new.display(), "watching for host changes");
                    self.watched.insert(new);
                }
                Err(e) => {
                    warn!(path = %new.display(), error = %e, "cannot watch a bind mount for host changes")
                }
            }
        }
    }
}

/// Follows `binds`, watches what running containers bind from `shares`, and sends changes
/// through `notify` until `shutdown`.
pub async fn run(
    shares: Vec<PathBuf>,
    binds: mpsc::UnboundedReceiver<BindEvent>,
    notify: Notifier,
    shutdown: CancellationToken,
) {
    let (watched, _) = tokio::sync::watch::channel(BTreeSet::new());
    run_reporting(shares, binds, notify, shutdown, watched).await
}

/// [`run`], publishing the set of watched folders on `watched` as it changes (a readiness
/// signal: a change under a folder is heard once the folder is in the set).
pub async fn run_reporting(
    shares: Vec<PathBuf>,
    mut binds: mpsc::UnboundedReceiver<BindEvent>,
    notify: Notifier,
    shutdown: CancellationToken,
    watched: tokio::sync::watch::Sender<BTreeSet<PathBuf>>,
) {
    let (changes_tx, mut changes) = mpsc::unbounded_channel::<notify::Result<notify::Event>>();
    let mut watcher = match notify::recommended_watcher(move |event| {
        let _ = changes_tx.send(event);
    }) {
        Ok(w) => w,
        Err(e) => {
            warn!(error = %e, "cannot watch shared folders: file watchers in containers will not hear of host edits");
            return;
        }
    };
    let mut watches = Watches {
        shares,
        containers: HashMap::new(),
        watched: BTreeSet::new(),
    };
    let mut pending: BTreeSet<PathBuf> = BTreeSet::new();
    let mut flush_at: Option<tokio::time::Instant> = None;
    loop {
        let flush = async {
            match flush_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        watched.send_if_modified(|w| {
            let changed = *w != watches.watched;
            if changed {
                w.clone_from(&watches.watched);
            }
            changed
        });
        tokio::select! {
            _ = shutdown.cancelled() => break,
            event = binds.recv() => match event {
                Some(BindEvent::Resync(all)) => {
                    watches.containers = all.into_iter().collect();
                    watches.apply(&mut watcher);
                }
                Some(BindEvent::Started { id, sources }) => {
                    watches.containers.insert(id, sources);
                    watches.apply(&mut watcher);
                }
                Some(BindEvent::Stopped { id }) => {
                    if watches.containers.remove(&id).is_some() {
                        watches.apply(&mut watcher);
                    }
                }
                None => break,
            },
            change = changes.recv() => match change {
                Some(Ok(event)) if forwarded(&event.kind) => {
                    pending.extend(event.paths);
                    flush_at.get_or_insert_with(|| tokio::time::Instant::now() + COLLECT_FOR);
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => debug!(error = %e, "host watcher error"),
                None => break,
            },
            _ = flush => {
                flush_at = None;
                let paths = std::mem::take(&mut pending);
                let count = paths.len();
                for batch in batches(paths) {
                    if let Err(e) = notify(batch).await {
                        debug!(error = %e, "cannot tell the guest of host changes");
                    }
                }
                debug!(count, "host changes sent to the guest");
            }
        }
    }
    drop(watcher);
    info!("share change forwarding stopped");
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{AccessKind, CreateKind, DataChange, MetadataKind, RemoveKind};
    use std::sync::{Arc, Mutex};

    #[cfg_attr(
        windows,
        ignore = "shared folders are Linux-only so far: Windows paths are not yet translated to the guest's"
    )]
    #[test]
    fn test_watch_roots_keep_binds_inside_shares_and_drop_nested_ones() {
        let shares = vec![PathBuf::from("/home/u")];
        let sources: Vec<PathBuf> = [
            "/home/u/app",
            "/home/u/app/src",
            "/home/u/other",
            "/etc",
            "/home/user2",
            "relative",
        ]
        .iter()
        .map(PathBuf::from)
        .collect();
        let roots: Vec<PathBuf> = watch_roots(&sources, &shares).into_iter().collect();
        assert_eq!(
            roots,
            [PathBuf::from("/home/u/app"), PathBuf::from("/home/u/other")]
        );
    }

    #[test]
    fn test_forwarded_kinds_exclude_what_a_replay_causes() {
        assert!(forwarded(&EventKind::Create(CreateKind::File)));
        assert!(forwarded(&EventKind::Remove(RemoveKind::Any)));
        assert!(forwarded(&EventKind::Modify(ModifyKind::Data(
            DataChange::Any
        ))));
        assert!(forwarded(&EventKind::Modify(ModifyKind::Name(
            notify::event::RenameMode::To
        ))));
        // What the guest's replay does on the host: chmod, open for writing, close.
        assert!(!forwarded(&EventKind::Modify(ModifyKind::Metadata(
            MetadataKind::Any
        ))));
        assert!(!forwarded(&EventKind::Access(AccessKind::Close(
            notify::event::AccessMode::Write
        ))));
        assert!(!forwarded(&EventKind::Access(AccessKind::Open(
            notify::event::AccessMode::Any
        ))));
    }

    #[test]
    fn test_batches_respect_count_and_size_and_fall_back_to_folders() {
        let few: BTreeSet<PathBuf> = (0..300)
            .map(|i| PathBuf::from(format!("/s/d/f{i}")))
            .collect();
        let b = batches(few);
        assert_eq!(
            b.iter().map(Vec::len).collect::<Vec<_>>(),
            [MAX_CHANGED_PATHS, 300 - MAX_CHANGED_PATHS]
        );
        let long: BTreeSet<PathBuf> = (0..100)
            .map(|i| PathBuf::from(format!("/s/{}{i}", "x".repeat(1000))))
            .collect();
        for batch in batches(long) {
            assert!(batch.iter().map(|p| p.len() + 4).sum::<usize>() <= MAX_BATCH_BYTES);
        }
        let many: BTreeSet<PathBuf> = (0..5000)
            .map(|i| PathBuf::from(format!("/s/d{}/f{i}", i % 3)))
            .collect();
        assert_eq!(
            batches(many),
            vec![vec!["/s/d0".to_string(), "/s/d1".into(), "/s/d2".into()]]
        );
    }

    /// The real host inotify: a change under a bound folder reaches the notifier once the
    /// container started, and no longer after it stopped; an attribute change never does.
    #[cfg_attr(
        windows,
        ignore = "shared folders are Linux-only so far: Windows paths are not yet translated to the guest's"
    )]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn test_changes_under_bound_folders_reach_the_notifier() {
        let dir = tempfile::tempdir().unwrap();
        let share = dir.path().join("share");
        let app = share.join("app");
        std::fs::create_dir_all(app.join("src")).unwrap();
        let sent: Arc<Mutex<Vec<String>>> = Arc::default();
        let notifier: Notifier = {
            let sent = sent.clone();
            Box::new(move |paths| {
                sent.lock().unwrap().extend(paths);
                Box::pin(async { Ok(()) })
            })
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let shutdown = CancellationToken::new();
        let (watched_tx, watched) = tokio::sync::watch::channel(BTreeSet::new());
        let task = tokio::spawn(run_reporting(
            vec![share.clone()],
            rx,
            notifier,
            shutdown.clone(),
            watched_tx,
        ));
        let watching = |want: bool| {
            let app = app.clone();
            let mut watched = watched.clone();
            async move {
                tokio::time::timeout(
                    Duration::from_secs(10),
                    watched.wait_for(|w| w.contains(&app) == want),
                )
                .await
                .expect("the watch set changes")
                .expect("the forwarder runs");
            }
        };
        let wait_for = |want: PathBuf| {
            let sent = sent.clone();
            async move {
                for _ in 0..200 {
                    if sent.lock().unwrap().iter().any(|p| Path::new(p) == want) {
                        return true;
                    }
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
                false
            }
        };

        // Not bound yet: nothing.
        std::fs::write(app.join("early.txt"), "x").unwrap();
        tx.send(BindEvent::Started {
            id: "c1".into(),
            sources: vec![app.clone(), PathBuf::from("/etc")],
        })
        .unwrap();
        watching(true).await;
        std::fs::write(app.join("src/main.rs"), "fn main() {}").unwrap();
        assert!(
            wait_for(app.join("src/main.rs")).await,
            "{:?}",
            sent.lock().unwrap()
        );
        assert!(!sent
            .lock()
            .unwrap()
            .iter()
            .any(|p| p.ends_with("early.txt")));

        // An attribute change alone is not forwarded.
        sent.lock().unwrap().clear();
        let mut permissions = std::fs::metadata(app.join("src/main.rs"))
            .unwrap()
            .permissions();
        permissions.set_readonly(true);
        std::fs::set_permissions(app.join("src/main.rs"), permissions).unwrap();
        std::fs::remove_file(app.join("early.txt")).unwrap();
        assert!(wait_for(app.join("early.txt")).await);
        assert!(
            !sent.lock().unwrap().iter().any(|p| p.ends_with("main.rs")),
            "{:?}",
            sent.lock().unwrap()
        );

        // Stopped: no longer watched.
        tx.send(BindEvent::Stopped { id: "c1".into() }).unwrap();
        watching(false).await;
        sent.lock().unwrap().clear();
        std::fs::write(app.join("late.txt"), "x").unwrap();
        assert!(!wait_for(app.join("late.txt")).await);
        shutdown.cancel();
        task.await.unwrap();
    }
}
