//! rmachine Desktop: a Tauri window over the `machine` library (the same one the
//! `rmachine` CLI uses) and each running machine's Docker engine (bollard on its
//! `docker.sock`). It has no VM logic of its own.
//!
//! Events the UI hears: `machines-changed` (a new [`machines::MachineList`]),
//! `machine-progress` ([`commands::Progress`]), `engine-event` ([`live::EngineEvent`]) and
//! `tray-show-machine` (a machine's name: the tray's "Open window", [`tray`]);
//! a view's own streams (logs, charts, terminals, builds) come on a channel it passes.
#![forbid(unsafe_code)]

pub mod build_context;
pub mod commands;
pub mod compose;
pub mod dockerignore;
pub mod downloads;
pub mod engine;
pub mod error;
pub mod image_build;
pub mod live;
pub mod logs;
pub mod machines;
pub mod run_spec;
pub mod stats;
pub mod terminal;
pub mod tray;
pub mod watch;

use std::sync::{Arc, Mutex};
use std::time::Instant;

use rmachine_machine::lifecycle::Lifecycle;
use tauri::{Emitter, Manager};

/// A digest of the embedded UI files (set by build.rs; it makes a UI change recompile).
pub const UI_DIGEST: &str = env!("RMACHINE_UI_DIGEST");

/// What every command reaches.
pub struct AppState {
    pub lc: Lifecycle,
    pub events: live::EngineEvents,
    /// The log views' streams.
    pub logs: live::Streams,
    /// The Build view's builds.
    pub builds: live::Streams,
    /// The Compose dialog's runs.
    pub compose: live::Streams,
    pub terminals: terminal::Terminals,
    pub stats: stats::Stats,
    pub tray: Mutex<Option<tray::Tray>>,
    /// When the process started (for the start-up benchmark).
    pub started: Instant,
}

/// Runs the app until its window closes or the tray's Quit.
pub fn run() -> std::process::ExitCode {
    let started = Instant::now();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RMACHINE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    tracing::debug!(ui = UI_DIGEST, "rmachine-desktop starting");
    let lc = match Lifecycle::from_env() {
        Ok(lc) => lc,
        Err(e) => {
            eprintln!(
                "rmachine-desktop: {}",
                rmachine_machine::lifecycle::error_chain(&e)
            );
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = tauri::Builder::default()
        .plugin(tauri_plugin_opener::init())
        .plugin(tauri_plugin_dialog::init())
        .invoke_handler(tauri::generate_handler![
            commands::list_machines,
            commands::create_machine,
            commands::create_ssh_machine,
            commands::machine_op,
            commands::remove_machine,
            commands::use_machine,
            commands::machine_logs,
            commands::get_defaults,
            commands::set_defaults,
            commands::get_engine_settings,
            commands::set_engine_settings,
            commands::list_containers,
            commands::container_action,
            commands::inspect_container,
            commands::open_container_logs,
            commands::close_container_logs,
            commands::save_container_logs,
            commands::list_images,
            commands::remove_image,
            commands::prune_images,
            commands::import_image,
            commands::save_image,
            commands::run_image,
            commands::open_build,
            commands::close_build,
            commands::pick_folder,
            commands::open_compose,
            commands::close_compose,
            commands::pick_compose_file,
            commands::list_volumes,
            commands::remove_volume,
            commands::prune_volumes,
            commands::list_networks,
            commands::open_url,
            commands::pick_tarball,
            commands::first_paint,
            commands::open_container_terminal,
            commands::open_machine_shell,
            commands::terminal_input,
            commands::terminal_resize,
            commands::close_terminal,
            commands::open_container_stats,
            commands::container_usage,
            commands::machine_disk_usage,
            commands::open_machine_stats,
            commands::close_stats,
            commands::live_streams,
            commands::first_run_plan,
            commands::start_default_machine,
        ])
        .setup(move |app| {
            let handle = app.handle().clone();
            let h = handle.clone();
            let events = live::EngineEvents::new(Arc::new(move |ev| {
                let _ = h.emit("engine-event", ev);
            }));
            let tray = match tray::build(&handle) {
                Ok(t) => Some(t),
                Err(e) => {
                    tracing::warn!(error = %e, "no tray icon");
                    None
                }
            };
            app.manage(AppState {
                lc: lc.clone(),
                events,
                logs: live::Streams::new(),
                builds: live::Streams::new(),
                compose: live::Streams::new(),
                terminals: terminal::Terminals::new(),
                stats: stats::Stats::new(),
                tray: Mutex::new(tray),
                started,
            });
            let h = handle.clone();
            std::thread::Builder::new()
                .name("machine-watch".into())
                .spawn(move || {
                    watch::watch(&lc, |list| {
                        let state = h.state::<AppState>();
                        state.events.sync(list);
                        if let Ok(mut t) = state.tray.lock() {
                            if let Some(t) = t.as_mut() {
                                t.update(list);
                            }
                        }
                        if let Err(e) = h.emit("machines-changed", list) {
                            tracing::debug!(error = %e, "cannot emit machines-changed");
                        }
                        true
                    })
                })?;
            Ok(())
        })
        .run(tauri::generate_context!());
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "the desktop app failed");
            eprintln!("rmachine-desktop: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
