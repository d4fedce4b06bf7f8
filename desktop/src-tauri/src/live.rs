//! Live streams from the engines: each running machine's `/events` (so the UI refreshes
//! a list when something changed, without polling the engine), which end when the
//! machine stops; and what every stream a view holds open shares ([`ActiveCount`]).

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bollard::query_parameters::EventsOptions;
use futures_util::StreamExt;
use serde::Serialize;
use tauri::async_runtime::JoinHandle;

use crate::engine;
use crate::machines::MachineList;

/// An engine event, as the UI receives it (`engine-event`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EngineEvent {
    pub machine: String,
    /// `container`, `image`, `volume`, `network`, …
    pub kind: String,
    /// `start`, `die`, `destroy`, `pull`, …
    pub action: String,
    pub id: String,
}

/// Where events go (the Tauri app handle, a session's channel, or a test's collector).
pub type Sink<T> = Arc<dyn Fn(T) + Send + Sync>;

/// How many streams of a kind hold a connection open: each holds a guard, which its task
/// owns, so the count falls when the task ends or is aborted (the connection dropped with
/// it). The window test reads these counts to prove that a closed view left nothing open.
#[derive(Debug, Clone, Default)]
pub struct ActiveCount(Arc<AtomicUsize>);

/// One open stream of an [`ActiveCount`].
#[derive(Debug)]
pub struct ActiveGuard(Arc<AtomicUsize>);

impl ActiveCount {
    pub fn guard(&self) -> ActiveGuard {
        self.0.fetch_add(1, Ordering::SeqCst);
        ActiveGuard(self.0.clone())
    }

    pub fn get(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Streams that views open and close by id (a log, a build): each is a task holding its
/// connection, aborted by [`Streams::close`] (the connection drops with it).
#[derive(Default)]
pub struct Streams {
    tasks: Mutex<HashMap<u64, JoinHandle<()>>>,
    next: AtomicU64,
    active: ActiveCount,
}

impl Streams {
    pub fn new() -> Streams {
        Streams::default()
    }

    /// Runs `stream` until it ends or is closed; returns its id.
    pub fn open(&self, stream: impl Future<Output = ()> + Send + 'static) -> u64 {
        let guard = self.active.guard();
        let task = tauri::async_runtime::spawn(async move {
            let _guard = guard;
            stream.await
        });
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        if let Ok(mut t) = self.tasks.lock() {
            t.retain(|_, t| !t.inner().is_finished());
            t.insert(id, task);
        }
        id
    }

    /// Stops a stream (its connection closes at once).
    pub fn close(&self, stream: u64) {
        if let Ok(mut t) = self.tasks.lock() {
            if let Some(t) = t.remove(&stream) {
                t.abort();
            }
        }
    }

    /// Streams still running.
    pub fn active(&self) -> usize {
        self.active.get()
    }
}

impl Drop for Streams {
    fn drop(&mut self) {
        if let Ok(t) = self.tasks.lock() {
            for t in t.values() {
                t.abort();
            }
        }
    }
}

/// The events streams of the running machines.
pub struct EngineEvents {
    tasks: Mutex<HashMap<String, (PathBuf, JoinHandle<()>)>>,
    sink: Sink<EngineEvent>,
}

impl EngineEvents {
    pub fn new(sink: Sink<EngineEvent>) -> EngineEvents {
        EngineEvents {
            tasks: Mutex::new(HashMap::new()),
            sink,
        }
    }

    /// Follows the events of every running machine in `list` and stops following the
    /// others. Call it from within the async runtime, with each new machine list.
    pub fn sync(&self, list: &MachineList) {
        let Ok(mut tasks) = self.tasks.lock() else {
            return;
        };
        let running: HashMap<String, PathBuf> = list
            .machines
            .iter()
            .filter(|m| m.state == "running")
            .filter_map(|m| Some((m.name.clone(), m.docker_endpoint.as_ref()?.path())))
            .collect();
        tasks.retain(|name, (socket, task)| {
            let keep = running.get(name) == Some(socket) && !task.inner().is_finished();
            if !keep {
                task.abort();
            }
            keep
        });
        for (name, socket) in running {
            if tasks.contains_key(&name) {
                continue;
            }
            let sink = self.sink.clone();
            let machine = name.clone();
            let path = socket.clone();
            let task =
                tauri::async_runtime::spawn(
                    async move { follow_events(machine, path, sink).await },
                );
            tasks.insert(name, (socket, task));
        }
    }
}

impl Drop for EngineEvents {
    fn drop(&mut self) {
        if let Ok(tasks) = self.tasks.lock() {
            for (_, task) in tasks.values() {
                task.abort();
            }
        }
    }
}

/// Follows one engine's events, reconnecting (while the task lives) when the stream ends.
async fn follow_events(machine: String, socket: PathBuf, sink: Sink<EngineEvent>) {
    loop {
        match engine::connect_socket(&socket) {
            Ok(docker) => {
                tracing::debug!(machine, "following engine events");
                // A change the UI missed while not connected.
                sink(EngineEvent {
                    machine: machine.clone(),
                    kind: "engine".into(),
                    action: "connected".into(),
                    id: String::new(),
                });
                let mut stream = docker.events(None::<EventsOptions>);
                while let Some(item) = stream.next().await {
                    match item {
                        Ok(ev) => sink(EngineEvent {
                            machine: machine.clone(),
                            kind: ev.typ.map(|t| t.to_string()).unwrap_or_default(),
                            action: ev.action.unwrap_or_default(),
                            id: ev.actor.and_then(|a| a.id).unwrap_or_default(),
                        }),
                        Err(e) => {
                            tracing::debug!(machine, error = %e, "engine events stream ended");
                            break;
                        }
                    }
                }
            }
            Err(e) => tracing::debug!(machine, error = %e, "cannot reach the engine"),
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}
