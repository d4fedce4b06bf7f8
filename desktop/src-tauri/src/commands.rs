//! The Tauri commands: thin wrappers over [`crate::machines`] and [`crate::engine`].
//! Machine lifecycle work runs on a blocking thread; each returns `{ kind, message }` on
//! failure.

use rmachine_machine::lifecycle::{Lifecycle, LogKind, MachinePlan, MachineSummary};
use serde::{Deserialize, Serialize};
use tauri::ipc::Channel;
use tauri::{AppHandle, Emitter, State};

use crate::compose::{self, ComposeEvent, ComposeRequest};
use crate::downloads::{self, Saved};
use crate::engine::{
    self, ContainerAction, ContainerGroup, ImageRow, ImportRequest, NetworkRow, Pruned, VolumeRow,
};
use crate::error::{CommandError, CommandResult, ErrorKind};
use crate::image_build::{self, BuildEvent, BuildForm};
use crate::logs::{self, LogEvent};
use crate::machines::{
    self, Defaults, LogText, MachineList, NewDefaults, NewMachine, NewSshMachine,
};
use crate::run_spec::{self, RunForm, Started};
use crate::stats::{ContainerStatsEvent, MachineStatsEvent};
use crate::terminal::{SessionId, Size, TerminalEvent};
use crate::AppState;

/// Progress of a machine operation (`machine-progress`).
#[derive(Debug, Clone, Serialize)]
pub struct Progress {
    pub name: String,
    pub op: MachineOp,
    pub detail: String,
    pub done: bool,
    pub error: Option<CommandError>,
}

/// A lifecycle operation on a machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MachineOp {
    Start,
    Stop,
    Restart,
    /// Stop at once.
    Kill,
}

/// Runs a blocking machine function on a blocking thread.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> CommandResult<T> + Send + 'static,
) -> CommandResult<T> {
    tauri::async_runtime::spawn_blocking(f).await.map_err(|e| {
        CommandError::new(
            ErrorKind::Internal,
            format!("the operation thread failed: {e}"),
        )
    })?
}

/// Runs `op` on machine `name`, telling the UI its progress; used by the window and the tray.
pub async fn run_machine_op(
    app: AppHandle,
    lc: Lifecycle,
    name: String,
    op: MachineOp,
) -> CommandResult<MachineSummary> {
    let emit = {
        let app = app.clone();
        let name = name.clone();
        move |detail: &str, done: bool, error: Option<CommandError>| {
            let p = Progress {
                name: name.clone(),
                op,
                detail: detail.to_string(),
                done,
                error,
            };
            if let Err(e) = app.emit("machine-progress", p) {
                tracing::debug!(error = %e, "cannot emit progress");
            }
        }
    };
    let emit2 = emit.clone();
    emit(
        match op {
            MachineOp::Start | MachineOp::Restart => "starting",
            MachineOp::Stop | MachineOp::Kill => "stopping",
        },
        false,
        None,
    );
    let n = name.clone();
    let result = blocking(move || {
        let mut progress = |d: &str| emit2(d, false, None);
        match op {
            MachineOp::Start => machines::start(&lc, &n, &mut progress),
            MachineOp::Stop => machines::stop(&lc, &n, false),
            MachineOp::Kill => machines::stop(&lc, &n, true),
            MachineOp::Restart => machines::restart(&lc, &n, &mut progress),
        }
    })
    .await;
    match &result {
        Ok(m) => emit(&m.state, true, None),
        Err(e) => {
            tracing::error!(machine = name, ?op, error = %e, "machine operation failed");
            emit("failed", true, Some(e.clone()))
        }
    }
    result
}

#[tauri::command]
pub async fn list_machines(state: State<'_, AppState>) -> CommandResult<MachineList> {
    let lc = state.lc.clone();
    blocking(move || machines::list(&lc)).await
}

#[tauri::command]
pub async fn create_machine(
    state: State<'_, AppState>,
    machine: NewMachine,
) -> CommandResult<MachineSummary> {
    let lc = state.lc.clone();
    blocking(move || machines::create(&lc, &machine)).await
}

/// Progress of an ssh machine's create (`machine-create-progress`).
#[derive(Debug, Clone, Serialize)]
pub struct CreateProgress {
    pub name: String,
    pub detail: String,
}

/// Creates an ssh machine; its steps (connecting, the host key pinned, probing,
/// installing the engine) go to the UI as `machine-create-progress` events.
#[tauri::command]
pub async fn create_ssh_machine(
    app: AppHandle,
    state: State<'_, AppState>,
    machine: NewSshMachine,
) -> CommandResult<MachineSummary> {
    let lc = state.lc.clone();
    blocking(move || {
        let name = machine.name.trim().to_string();
        let mut progress = |detail: &str| {
            let p = CreateProgress {
                name: name.clone(),
                detail: detail.to_string(),
            };
            if let Err(e) = app.emit("machine-create-progress", p) {
                tracing::debug!(error = %e, "cannot emit progress");
            }
        };
        machines::create_ssh(&lc, &machine, &mut progress)
    })
    .await
}

#[tauri::command]
pub async fn machine_op(
    app: AppHandle,
    state: State<'_, AppState>,
    name: String,
    op: MachineOp,
) -> CommandResult<MachineSummary> {
    run_machine_op(app, state.lc.clone(), name, op).await
}

/// What the first-run offer says before it starts anything: the machine `default` would
/// get (the defaults resolved) and the driver, backend and accelerator, with why.
#[tauri::command]
pub async fn first_run_plan(state: State<'_, AppState>) -> CommandResult<MachinePlan> {
    let lc = state.lc.clone();
    blocking(move || Ok(lc.plan(&Default::default())?)).await
}

/// First run: creates `default` from the defaults when it does not exist and starts it,
/// with a start's progress events (the tray's Start takes the same path).
#[tauri::command]
pub async fn start_default_machine(
    app: AppHandle,
    state: State<'_, AppState>,
) -> CommandResult<MachineSummary> {
    let lc = state.lc.clone();
    blocking(move || machines::ensure_default(&lc)).await?;
    run_machine_op(
        app,
        state.lc.clone(),
        rmachine_machine::lifecycle::DEFAULT_MACHINE.into(),
        MachineOp::Start,
    )
    .await
}

#[tauri::command]
pub async fn remove_machine(
    state: State<'_, AppState>,
    name: String,
    force: bool,
) -> CommandResult<()> {
    let lc = state.lc.clone();
    blocking(move || machines::remove(&lc, &name, force)).await
}

#[tauri::command]
pub async fn use_machine(
    state: State<'_, AppState>,
    name: Option<String>,
) -> CommandResult<MachineList> {
    let lc = state.lc.clone();
    blocking(move || machines::use_context(&lc, name.as_deref())).await
}

#[tauri::command]
pub async fn machine_logs(
    state: State<'_, AppState>,
    name: String,
    kind: LogKind,
    max_bytes: u64,
) -> CommandResult<LogText> {
    let lc = state.lc.clone();
    blocking(move || machines::logs(&lc, &name, kind, max_bytes.min(4 << 20))).await
}

#[tauri::command]
pub async fn get_defaults(state: State<'_, AppState>) -> CommandResult<Defaults> {
    let lc = state.lc.clone();
    blocking(move || machines::defaults(&lc)).await
}

#[tauri::command]
pub async fn set_defaults(
    state: State<'_, AppState>,
    defaults: NewDefaults,
) -> CommandResult<Defaults> {
    let lc = state.lc.clone();
    blocking(move || machines::set_defaults(&lc, &defaults)).await
}

#[tauri::command]
pub async fn get_engine_settings(
    state: State<'_, AppState>,
    machine: String,
) -> CommandResult<machines::EngineSettings> {
    let lc = state.lc.clone();
    blocking(move || machines::engine_settings(&lc, &machine)).await
}

#[tauri::command]
pub async fn set_engine_settings(
    state: State<'_, AppState>,
    machine: String,
    json: String,
) -> CommandResult<machines::EngineSettings> {
    let lc = state.lc.clone();
    blocking(move || machines::set_engine_settings(&lc, &machine, &json)).await
}

#[tauri::command]
pub async fn list_containers(
    state: State<'_, AppState>,
    machine: String,
) -> CommandResult<Vec<ContainerGroup>> {
    engine::containers(&engine::connect(&state.lc, &machine)?).await
}

/// What a running machine's data disk holds (`docker system df`) and costs the host (the
/// machine detail view).
#[tauri::command]
pub async fn machine_disk_usage(
    state: State<'_, AppState>,
    machine: String,
) -> CommandResult<crate::stats::DiskUsage> {
    let docker = engine::connect(&state.lc, &machine)?;
    let m = state.lc.store().load(&machine)?;
    Ok(crate::stats::disk_usage(
        &docker,
        &m.files.data_disk(),
        u64::from(m.spec.disk_size_gib) << 30,
    )
    .await?)
}

/// Each running container's CPU and memory (the Containers list's summary column, asked
/// every few seconds while the list is shown).
#[tauri::command]
pub async fn container_usage(
    state: State<'_, AppState>,
    machine: String,
) -> CommandResult<Vec<crate::stats::ContainerUsage>> {
    let docker = engine::connect(&state.lc, &machine)?;
    Ok(crate::stats::containers_usage(&docker).await?)
}

#[tauri::command]
pub async fn container_action(
    state: State<'_, AppState>,
    machine: String,
    id: String,
    action: ContainerAction,
) -> CommandResult<()> {
    engine::container_action(&engine::connect(&state.lc, &machine)?, &id, action).await
}

#[tauri::command]
pub async fn inspect_container(
    state: State<'_, AppState>,
    machine: String,
    id: String,
) -> CommandResult<String> {
    engine::inspect_container(&engine::connect(&state.lc, &machine)?, &id).await
}

/// Sends a container's last `tail` lines, then (when `follow`) each new line, on
/// `events` until `close_container_logs`.
#[tauri::command]
pub async fn open_container_logs(
    state: State<'_, AppState>,
    machine: String,
    id: String,
    tail: u32,
    follow: bool,
    events: Channel<LogEvent>,
) -> CommandResult<u64> {
    let docker = engine::connect(&state.lc, &machine)?;
    let tail = tail.clamp(1, 100_000);
    Ok(state.logs.open(logs::stream_lines(
        docker,
        id,
        tail,
        follow,
        channel_sink(events),
    )))
}

#[tauri::command]
pub fn close_container_logs(state: State<'_, AppState>, stream: u64) {
    state.logs.close(stream);
}

/// Where a download goes: the path the user picks (`None`: they cancelled), or a new file
/// in the Downloads folder when no file chooser can be shown.
async fn save_target(
    app: &AppHandle,
    file_name: String,
    filter: (&'static str, &'static [&'static str]),
) -> CommandResult<Option<(std::path::PathBuf, bool)>> {
    if !downloads::chooser_available() {
        return Ok(Some((downloads::in_downloads(&file_name)?, false)));
    }
    let app = app.clone();
    blocking(move || {
        use tauri_plugin_dialog::DialogExt;
        let mut dialog = app
            .dialog()
            .file()
            .set_file_name(&file_name)
            .add_filter(filter.0, filter.1);
        if let Some(dir) = downloads::downloads_dir().ok().filter(|d| d.is_dir()) {
            dialog = dialog.set_directory(dir);
        }
        Ok(dialog
            .blocking_save_file()
            .and_then(|p| p.into_path().ok())
            .map(|p| (p, true)))
    })
    .await
}

/// Saves a container's whole log (with timestamps when `timestamps`) to a file the user
/// picks, or to the Downloads folder; `None` when they cancelled.
#[tauri::command]
pub async fn save_container_logs(
    app: AppHandle,
    state: State<'_, AppState>,
    machine: String,
    id: String,
    name: String,
    timestamps: bool,
) -> CommandResult<Option<Saved>> {
    let docker = engine::connect(&state.lc, &machine)?;
    let Some((path, chosen)) = save_target(
        &app,
        downloads::file_name_of(&name, "log"),
        ("Log files", &["log", "txt"]),
    )
    .await?
    else {
        return Ok(None);
    };
    let count = logs::save(&docker, &id, timestamps, &path).await?;
    Ok(Some(Saved {
        path: path.display().to_string(),
        chosen,
        count,
    }))
}

#[tauri::command]
pub async fn list_images(
    state: State<'_, AppState>,
    machine: String,
) -> CommandResult<Vec<ImageRow>> {
    engine::images(&engine::connect(&state.lc, &machine)?).await
}

#[tauri::command]
pub async fn remove_image(
    state: State<'_, AppState>,
    machine: String,
    id: String,
    force: bool,
) -> CommandResult<()> {
    engine::remove_image(&engine::connect(&state.lc, &machine)?, &id, force).await
}

#[tauri::command]
pub async fn prune_images(state: State<'_, AppState>, machine: String) -> CommandResult<Pruned> {
    engine::prune_images(&engine::connect(&state.lc, &machine)?).await
}

#[tauri::command]
pub async fn import_image(
    state: State<'_, AppState>,
    machine: String,
    request: ImportRequest,
) -> CommandResult<String> {
    engine::import_image(&engine::connect(&state.lc, &machine)?, &request).await
}

/// Saves an image as a `docker save` archive to a file the user picks, or to the
/// Downloads folder; `None` when they cancelled.
#[tauri::command]
pub async fn save_image(
    app: AppHandle,
    state: State<'_, AppState>,
    machine: String,
    reference: String,
) -> CommandResult<Option<Saved>> {
    let docker = engine::connect(&state.lc, &machine)?;
    let Some((path, chosen)) = save_target(
        &app,
        downloads::file_name_of(&reference, "tar"),
        ("Image archives", &["tar"]),
    )
    .await?
    else {
        return Ok(None);
    };
    let count = engine::save_image(&docker, &reference, &path).await?;
    Ok(Some(Saved {
        path: path.display().to_string(),
        chosen,
        count,
    }))
}

/// Creates and starts a container from the Run form.
#[tauri::command]
pub async fn run_image(
    state: State<'_, AppState>,
    machine: String,
    form: RunForm,
) -> CommandResult<Started> {
    let lc = state.lc.clone();
    let name = machine.clone();
    let m = blocking(move || Ok(lc.store().load(&name)?)).await?;
    // An ssh machine's bind sources are its host's folders, not this computer's.
    let spec = form.parse(m.spec.ssh.is_none())?;
    run_spec::run(&engine::connect(&state.lc, &machine)?, &spec).await
}

/// Builds an image from a folder; its progress, then `done` or `failed`, come on
/// `events`. Closing the stream (`close_build`) stops the build.
#[tauri::command]
pub async fn open_build(
    state: State<'_, AppState>,
    machine: String,
    form: BuildForm,
    events: Channel<BuildEvent>,
) -> CommandResult<u64> {
    let spec = form.parse()?;
    let docker = engine::connect(&state.lc, &machine)?;
    Ok(state
        .builds
        .open(image_build::build(docker, spec, channel_sink(events))))
}

#[tauri::command]
pub fn close_build(state: State<'_, AppState>, stream: u64) {
    state.builds.close(stream);
}

/// Runs `docker compose up -d` or `down` on a machine; compose's output, then `done` or
/// `failed`, come on `events`. Closing the stream (`close_compose`) stops compose.
#[tauri::command]
pub async fn open_compose(
    state: State<'_, AppState>,
    machine: String,
    request: ComposeRequest,
    events: Channel<ComposeEvent>,
) -> CommandResult<u64> {
    let spec = request.parse()?;
    let lc = state.lc.clone();
    let host = blocking(move || engine::docker_host(&lc, &machine)).await?;
    Ok(state
        .compose
        .open(compose::run(host, spec, channel_sink(events))))
}

#[tauri::command]
pub fn close_compose(state: State<'_, AppState>, stream: u64) {
    state.compose.close(stream);
}

/// Asks for a compose file with the system's file chooser; `None` when cancelled.
#[tauri::command]
pub async fn pick_compose_file(app: AppHandle) -> CommandResult<Option<String>> {
    if !downloads::chooser_available() {
        return Err(CommandError::new(
            ErrorKind::Unsupported,
            "no file chooser can be shown here: type the compose file's path instead",
        ));
    }
    use tauri_plugin_dialog::DialogExt;
    blocking(move || {
        Ok(app
            .dialog()
            .file()
            .add_filter("Compose files", &["yaml", "yml"])
            .blocking_pick_file()
            .and_then(|p| p.into_path().ok())
            .map(|p| p.display().to_string()))
    })
    .await
}

#[tauri::command]
pub async fn list_volumes(
    state: State<'_, AppState>,
    machine: String,
) -> CommandResult<Vec<VolumeRow>> {
    engine::volumes(&engine::connect(&state.lc, &machine)?).await
}

#[tauri::command]
pub async fn remove_volume(
    state: State<'_, AppState>,
    machine: String,
    name: String,
) -> CommandResult<()> {
    engine::remove_volume(&engine::connect(&state.lc, &machine)?, &name).await
}

#[tauri::command]
pub async fn prune_volumes(state: State<'_, AppState>, machine: String) -> CommandResult<Pruned> {
    engine::prune_volumes(&engine::connect(&state.lc, &machine)?).await
}

#[tauri::command]
pub async fn list_networks(
    state: State<'_, AppState>,
    machine: String,
) -> CommandResult<Vec<NetworkRow>> {
    engine::networks(&engine::connect(&state.lc, &machine)?).await
}

/// A sink that sends to a channel the UI holds (one per session or stream).
fn channel_sink<T: Serialize + Clone + Send + Sync + 'static>(
    channel: Channel<T>,
) -> crate::live::Sink<T> {
    std::sync::Arc::new(move |event: T| {
        if let Err(e) = channel.send(event) {
            tracing::debug!(error = %e, "cannot send to the UI's channel");
        }
    })
}

/// Opens a shell on a TTY in a running container; its output, then its exit status,
/// come on `events`.
#[tauri::command]
pub async fn open_container_terminal(
    state: State<'_, AppState>,
    machine: String,
    id: String,
    size: Size,
    events: Channel<TerminalEvent>,
) -> CommandResult<SessionId> {
    let socket = engine::socket(&state.lc, &machine)?;
    let docker = engine::connect_socket(&socket)?;
    state
        .terminals
        .open_container(docker, &socket, &id, size, channel_sink(events))
        .await
}

/// Opens a root shell in a machine's guest through its agent (as `rmachine shell`).
#[tauri::command]
pub async fn open_machine_shell(
    state: State<'_, AppState>,
    machine: String,
    size: Size,
    events: Channel<TerminalEvent>,
) -> CommandResult<SessionId> {
    let lc = state.lc.clone();
    let name = machine.clone();
    let m = blocking(move || Ok(lc.store().load(&name)?)).await?;
    if let Some(ssh) = &m.spec.ssh {
        return Err(CommandError::new(
            ErrorKind::Unsupported,
            format!(
                "machine {machine} is an ssh machine: open a shell with ssh itself (ssh {})",
                ssh.target()
            ),
        ));
    }
    let carrier = m.running_carrier()?;
    state
        .terminals
        .open_machine(&carrier, size, channel_sink(events))
        .await
}

#[tauri::command]
pub async fn terminal_input(
    state: State<'_, AppState>,
    session: SessionId,
    data: String,
) -> CommandResult<()> {
    state.terminals.input(session, data.into_bytes()).await
}

#[tauri::command]
pub async fn terminal_resize(
    state: State<'_, AppState>,
    session: SessionId,
    size: Size,
) -> CommandResult<()> {
    state.terminals.resize(session, size).await
}

#[tauri::command]
pub fn close_terminal(state: State<'_, AppState>, session: SessionId) {
    state.terminals.close(session);
}

/// Follows a container's stats for its charts until `close_stats`.
#[tauri::command]
pub async fn open_container_stats(
    state: State<'_, AppState>,
    machine: String,
    id: String,
    events: Channel<ContainerStatsEvent>,
) -> CommandResult<u64> {
    let docker = engine::connect(&state.lc, &machine)?;
    Ok(state.stats.open_container(docker, id, channel_sink(events)))
}

/// Samples a machine for its charts until `close_stats` (or until it stops).
#[tauri::command]
pub async fn open_machine_stats(
    state: State<'_, AppState>,
    machine: String,
    events: Channel<MachineStatsEvent>,
) -> CommandResult<u64> {
    Ok(state
        .stats
        .open_machine(state.lc.clone(), machine, channel_sink(events)))
}

#[tauri::command]
pub fn close_stats(state: State<'_, AppState>, stream: u64) {
    state.stats.close(stream);
}

/// The streams that hold a connection open (for the window test and the benchmark: a
/// closed view must leave none).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct LiveStreams {
    pub stats: usize,
    pub terminals: usize,
    pub logs: usize,
    pub builds: usize,
    pub compose: usize,
}

#[tauri::command]
pub fn live_streams(state: State<'_, AppState>) -> LiveStreams {
    LiveStreams {
        stats: state.stats.active(),
        terminals: state.terminals.active(),
        logs: state.logs.active(),
        builds: state.builds.active(),
        compose: state.compose.active(),
    }
}

/// Opens a published port's page in the default browser (only local http URLs).
#[tauri::command]
pub async fn open_url(app: AppHandle, url: String) -> CommandResult<()> {
    if !is_local_http(&url) {
        return Err(CommandError::new(
            ErrorKind::Invalid,
            format!("{url} is not a local http address"),
        ));
    }
    use tauri_plugin_opener::OpenerExt;
    app.opener()
        .open_url(&url, None::<&str>)
        .map_err(|e| CommandError::new(ErrorKind::Io, format!("cannot open {url}: {e}")))
}

/// Whether `url` is `http://localhost:PORT…` or `http://127.0.0.1:PORT…`.
pub fn is_local_http(url: &str) -> bool {
    ["http://localhost:", "http://127.0.0.1:"].iter().any(|p| {
        url.strip_prefix(p).is_some_and(|rest| {
            let port: String = rest.chars().take_while(char::is_ascii_digit).collect();
            !port.is_empty()
                && port.parse::<u16>().is_ok()
                && rest[port.len()..].chars().next().is_none_or(|c| c == '/')
        })
    })
}

/// Asks for a tarball with the system's file chooser; `None` when cancelled.
#[tauri::command]
pub async fn pick_tarball(app: AppHandle) -> CommandResult<Option<String>> {
    use tauri_plugin_dialog::DialogExt;
    blocking(move || {
        let picked = app
            .dialog()
            .file()
            .add_filter("Tarballs", &["tar", "gz", "tgz", "xz", "zst"])
            .blocking_pick_file();
        Ok(picked
            .and_then(|p| p.into_path().ok())
            .map(|p| p.display().to_string()))
    })
    .await
}

/// Asks for a folder with the system's file chooser; `None` when cancelled, or when no
/// chooser can be shown (then the path is typed).
#[tauri::command]
pub async fn pick_folder(app: AppHandle) -> CommandResult<Option<String>> {
    if !downloads::chooser_available() {
        return Err(CommandError::new(
            ErrorKind::Unsupported,
            "no file chooser can be shown here: type the folder's path instead",
        ));
    }
    use tauri_plugin_dialog::DialogExt;
    blocking(move || {
        Ok(app
            .dialog()
            .file()
            .blocking_pick_folder()
            .and_then(|p| p.into_path().ok())
            .map(|p| p.display().to_string()))
    })
    .await
}

/// The window painted its first machine list: for the start-up benchmark.
#[tauri::command]
pub fn first_paint(state: State<'_, AppState>) {
    let since_start = state.started.elapsed();
    let unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    tracing::info!(
        ms = since_start.as_millis() as u64,
        "first machine list painted"
    );
    if std::env::var_os("RMACHINE_DESKTOP_BENCH").is_some() {
        println!(
            "first-paint since_main_ms={} unix_ms={unix_ms}",
            since_start.as_millis()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_only_local_http_urls_open() {
        assert!(is_local_http("http://localhost:8080"));
        assert!(is_local_http("http://127.0.0.1:80/path"));
        assert!(!is_local_http("http://localhost:99999"));
        assert!(!is_local_http("http://localhost:80@evil.example"));
        assert!(!is_local_http("file:///etc/passwd"));
        assert!(!is_local_http("https://example.com"));
    }
}
