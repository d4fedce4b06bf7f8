//! The tray icon: a submenu for each machine with its state in the label, Start, Stop and
//! Restart (enabled as the Machines page enables them), "Switch docker to this machine"
//! (`rmachine use`) and "Open window" (the machine's page); then open the window, quit.
//!
//! The menu is rebuilt from each new machine list (see [`crate::watch`]) when what it
//! shows changed. On Linux the tray is libayatana-appindicator: a StatusNotifierItem whose
//! menu is exported over D-Bus as `com.canonical.dbusmenu` (`tests/tray.rs` drives it).

use rmachine_machine::lifecycle::DEFAULT_MACHINE;
use tauri::image::Image;
use tauri::menu::{IsMenuItem, Menu, MenuItem, PredefinedMenuItem, Submenu};
use tauri::tray::{TrayIcon, TrayIconBuilder};
use tauri::{AppHandle, Emitter, Manager, Wry};

use crate::commands::{self, MachineOp};
use crate::error::{CommandError, ErrorKind};
use crate::machines::{self, MachineList};
use crate::AppState;

/// The event asking the window to show a machine's page (its name is the payload).
pub const SHOW_MACHINE_EVENT: &str = "tray-show-machine";
/// The label of the item that makes a machine's docker context current.
pub const USE_LABEL: &str = "Switch docker to this machine";

const ICON_RUNNING: &[u8] = include_bytes!("../icons/tray-running.png");
const ICON_STOPPED: &[u8] = include_bytes!("../icons/tray-stopped.png");

/// What the tray shows of one machine; the menu is rebuilt when one of these changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrayMachine {
    pub name: String,
    /// As in the machine list, or `not created` for the `default` machine the tray
    /// offers to start when there is none.
    pub state: String,
    /// Whether its docker context is the current one.
    pub active: bool,
    pub start: bool,
    /// Stop enabled; while the machine starts it stops at once (kill), as on the page.
    pub stop: bool,
    pub restart: bool,
}

impl TrayMachine {
    /// The submenu's label: the name, the state, and whether docker uses it.
    pub fn label(&self) -> String {
        if self.active {
            format!("{}: {} (docker)", self.name, self.state)
        } else {
            format!("{}: {}", self.name, self.state)
        }
    }

    fn stop_op(&self) -> TrayOp {
        if self.state == "starting" {
            TrayOp::Kill
        } else {
            TrayOp::Stop
        }
    }
}

/// The machines as the tray shows them. With none, `default` (not created): its Start
/// creates it with the defaults, as `rmachine start` does.
pub fn view(list: &MachineList) -> Vec<TrayMachine> {
    if list.machines.is_empty() {
        return vec![TrayMachine {
            name: DEFAULT_MACHINE.into(),
            state: "not created".into(),
            active: false,
            start: true,
            stop: false,
            restart: false,
        }];
    }
    list.machines
        .iter()
        .map(|m| {
            let state = m.state.as_str();
            let stopped = matches!(state, "stopped" | "error");
            let busy = matches!(state, "starting" | "stopping" | "creating");
            TrayMachine {
                name: m.name.clone(),
                state: m.state.clone(),
                active: m.active,
                start: stopped && m.can_start_stop,
                stop: !stopped && (!busy || state == "starting"),
                restart: state == "running",
            }
        })
        .collect()
}

/// What a machine's menu item does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrayOp {
    Start,
    Stop,
    Kill,
    Restart,
    /// Make its docker context current.
    Use,
    /// Show its page in the window.
    Open,
}

impl TrayOp {
    const ALL: [TrayOp; 6] = [
        TrayOp::Start,
        TrayOp::Stop,
        TrayOp::Kill,
        TrayOp::Restart,
        TrayOp::Use,
        TrayOp::Open,
    ];

    fn as_str(self) -> &'static str {
        match self {
            TrayOp::Start => "start",
            TrayOp::Stop => "stop",
            TrayOp::Kill => "kill",
            TrayOp::Restart => "restart",
            TrayOp::Use => "use",
            TrayOp::Open => "open",
        }
    }
}

/// A menu item's meaning, from its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrayAction {
    ShowWindow,
    Quit,
    Machine { op: TrayOp, name: String },
}

const MACHINE_ID_PREFIX: &str = "machine/";

/// The id of a machine's item: `machine/<op>/<name>`.
pub fn machine_item_id(op: TrayOp, name: &str) -> String {
    format!("{MACHINE_ID_PREFIX}{}/{name}", op.as_str())
}

/// What the item with this id does (`None`: a label, a submenu).
pub fn action(id: &str) -> Option<TrayAction> {
    match id {
        "show" => return Some(TrayAction::ShowWindow),
        "quit" => return Some(TrayAction::Quit),
        _ => {}
    }
    let (op, name) = id.strip_prefix(MACHINE_ID_PREFIX)?.split_once('/')?;
    let op = TrayOp::ALL.into_iter().find(|o| o.as_str() == op)?;
    (!name.is_empty()).then(|| TrayAction::Machine {
        op,
        name: name.to_string(),
    })
}

/// The tray icon and what its menu shows now.
pub struct Tray {
    icon: TrayIcon,
    shown: Option<Vec<TrayMachine>>,
}

/// Builds the tray icon with a menu that waits for the first machine list.
pub fn build(app: &AppHandle) -> tauri::Result<Tray> {
    let loading = MenuItem::with_id(app, "loading", "Machines: …", false, None::<&str>)?;
    let menu = menu(app, &[&loading])?;
    let icon = TrayIconBuilder::with_id("main")
        .icon(Image::from_bytes(ICON_STOPPED)?)
        .tooltip("rmachine")
        .menu(&menu)
        .on_menu_event(|app, event| {
            if let Some(a) = action(event.id().as_ref()) {
                on_action(app, a);
            }
        })
        .build(app)?;
    Ok(Tray { icon, shown: None })
}

/// The menu: `machines`, then the window and Quit.
fn menu(app: &AppHandle, machines: &[&dyn IsMenuItem<Wry>]) -> tauri::Result<Menu<Wry>> {
    let menu = Menu::with_items(app, machines)?;
    let show = MenuItem::with_id(app, "show", "Open rmachine Desktop", true, None::<&str>)?;
    let quit = MenuItem::with_id(app, "quit", "Quit", true, None::<&str>)?;
    menu.append_items(&[&PredefinedMenuItem::separator(app)?, &show, &quit])?;
    Ok(menu)
}

fn machine_submenu(app: &AppHandle, m: &TrayMachine) -> tauri::Result<Submenu<Wry>> {
    let item = |op: TrayOp, text: &str, enabled: bool| {
        MenuItem::with_id(
            app,
            machine_item_id(op, &m.name),
            text,
            enabled,
            None::<&str>,
        )
    };
    let start = item(TrayOp::Start, "Start", m.start)?;
    let stop = item(m.stop_op(), "Stop", m.stop)?;
    let restart = item(TrayOp::Restart, "Restart", m.restart)?;
    // Only a machine that exists has a context to switch to, or a page.
    let exists = m.state != "not created";
    let use_ = item(TrayOp::Use, USE_LABEL, exists && !m.active)?;
    let open = item(TrayOp::Open, "Open window", exists)?;
    Submenu::with_id_and_items(
        app,
        format!("machine/{}", m.name),
        m.label(),
        true,
        &[
            &start,
            &stop,
            &restart,
            &PredefinedMenuItem::separator(app)?,
            &use_,
            &open,
        ],
    )
}

fn show_window(app: &AppHandle) {
    if let Some(w) = app.get_webview_window("main") {
        let _ = w.show();
        let _ = w.unminimize();
        let _ = w.set_focus();
    }
}

fn on_action(app: &AppHandle, action: TrayAction) {
    let (op, name) = match action {
        TrayAction::ShowWindow => return show_window(app),
        TrayAction::Quit => return app.exit(0),
        TrayAction::Machine { op, name } => (op, name),
    };
    if op == TrayOp::Open {
        show_window(app);
        if let Err(e) = app.emit(SHOW_MACHINE_EVENT, &name) {
            tracing::debug!(error = %e, "cannot emit {SHOW_MACHINE_EVENT}");
        }
        return;
    }
    let lc = app.state::<AppState>().lc.clone();
    let app = app.clone();
    tauri::async_runtime::spawn(async move {
        let result = match op {
            TrayOp::Use => {
                let (lc, n) = (lc.clone(), name.clone());
                blocking(move || machines::use_context(&lc, Some(&n)).map(|_| ())).await
            }
            TrayOp::Start | TrayOp::Stop | TrayOp::Kill | TrayOp::Restart => {
                if op == TrayOp::Start && name == DEFAULT_MACHINE {
                    // `default` is created on first start, as `rmachine start` does.
                    let lc = lc.clone();
                    if let Err(e) = blocking(move || machines::ensure_default(&lc)).await {
                        tracing::error!(machine = name, error = %e, "tray: create");
                        return;
                    }
                }
                let op = match op {
                    TrayOp::Start => MachineOp::Start,
                    TrayOp::Stop => MachineOp::Stop,
                    TrayOp::Kill => MachineOp::Kill,
                    _ => MachineOp::Restart,
                };
                commands::run_machine_op(app, lc, name.clone(), op)
                    .await
                    .map(|_| ())
            }
            TrayOp::Open => Ok(()),
        };
        if let Err(e) = result {
            tracing::error!(machine = name, op = op.as_str(), error = %e, "tray action failed");
        }
    });
}

async fn blocking(
    f: impl FnOnce() -> Result<(), CommandError> + Send + 'static,
) -> Result<(), CommandError> {
    tauri::async_runtime::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(CommandError::new(ErrorKind::Internal, e.to_string())))
}

impl Tray {
    /// Shows a new machine list: rebuilds the menu when what it shows changed.
    pub fn update(&mut self, list: &MachineList) {
        let view = view(list);
        if self.shown.as_ref() == Some(&view) {
            return;
        }
        if let Err(e) = self.rebuild(&view) {
            tracing::warn!(error = %e, "cannot rebuild the tray menu");
            return;
        }
        let running = view.iter().any(|m| m.state == "running");
        let tip: Vec<String> = view.iter().map(TrayMachine::label).collect();
        let _ = self
            .icon
            .set_tooltip(Some(format!("rmachine: {}", tip.join(", "))));
        if let Ok(img) = Image::from_bytes(if running { ICON_RUNNING } else { ICON_STOPPED }) {
            let _ = self.icon.set_icon(Some(img));
        }
        self.shown = Some(view);
    }

    fn rebuild(&self, view: &[TrayMachine]) -> tauri::Result<()> {
        let app = self.icon.app_handle();
        let subs = view
            .iter()
            .map(|m| machine_submenu(app, m))
            .collect::<tauri::Result<Vec<_>>>()?;
        let items: Vec<&dyn IsMenuItem<Wry>> =
            subs.iter().map(|s| s as &dyn IsMenuItem<Wry>).collect();
        self.icon.set_menu(Some(menu(app, &items)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rmachine_machine::config::{DriverKind, Settings};
    use rmachine_machine::lifecycle::Lifecycle;
    use rmachine_machine::paths::Paths;
    use rmachine_machine::store::Store;

    fn fake_lifecycle(dir: &std::path::Path) -> Lifecycle {
        Lifecycle::new(
            Store::new(Paths::with_roots(dir.join("h"), dir.join("c"))),
            dir.join("d"),
        )
    }

    #[test]
    fn test_view_offers_default_when_there_is_no_machine() {
        let dir = tempfile::tempdir().unwrap();
        let list = machines::list(&fake_lifecycle(dir.path())).unwrap();
        let v = view(&list);
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].label(), "default: not created");
        assert!(v[0].start && !v[0].stop && !v[0].restart);
    }

    #[test]
    fn test_view_enables_actions_by_state() {
        let dir = tempfile::tempdir().unwrap();
        let lc = fake_lifecycle(dir.path());
        let fake = Settings {
            driver: Some(DriverKind::Fake),
            ..Default::default()
        };
        lc.create("alpha", &fake).unwrap();
        lc.create("beta", &fake).unwrap();
        lc.start("beta", &mut |_| {}).unwrap();
        lc.use_machine("beta").unwrap();
        let v = view(&machines::list(&lc).unwrap());
        assert_eq!(
            v.iter().map(TrayMachine::label).collect::<Vec<_>>(),
            ["alpha: stopped", "beta: running (docker)"]
        );
        assert!(v[0].start && !v[0].stop && !v[0].restart && !v[0].active);
        assert!(!v[1].start && v[1].stop && v[1].restart && v[1].active);
        assert_eq!(v[1].stop_op(), TrayOp::Stop);

        let mut starting = v[0].clone();
        starting.state = "starting".into();
        assert_eq!(starting.stop_op(), TrayOp::Kill);
    }

    #[test]
    fn test_item_ids_round_trip() {
        for op in TrayOp::ALL {
            assert_eq!(
                action(&machine_item_id(op, "my-vm")),
                Some(TrayAction::Machine {
                    op,
                    name: "my-vm".into()
                })
            );
        }
        assert_eq!(action("show"), Some(TrayAction::ShowWindow));
        assert_eq!(action("quit"), Some(TrayAction::Quit));
        assert_eq!(action("machine/alpha"), None);
        assert_eq!(action("machine/start/"), None);
        assert_eq!(action("machine/fly/alpha"), None);
        assert_eq!(action("loading"), None);
    }
}
