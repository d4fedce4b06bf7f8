//! The tray icon: the default machine's state, start and stop it, show the window, quit.

use rmachine_machine::lifecycle::DEFAULT_MACHINE;
use tauri::image::Image;
use tauri::menu::{Menu, MenuItem, PredefinedMenuItem};
use tauri::tray::{TrayIcon, TrayIconBuilder};
use tauri::{AppHandle, Manager};

use crate::commands::{self, MachineOp};
use crate::error::{CommandError, ErrorKind};
use crate::machines::{self, MachineList};
use crate::AppState;

/// The tray's parts that change with the default machine's state.
pub struct Tray {
    icon: TrayIcon,
    status: MenuItem<tauri::Wry>,
    start: MenuItem<tauri::Wry>,
    stop: MenuItem<tauri::Wry>,
}

const ICON_RUNNING: &[u8] = include_bytes!("../icons/tray-running.png");
const ICON_STOPPED: &[u8] = include_bytes!("../icons/tray-stopped.png");

/// Builds the tray icon and its menu.
pub fn build(app: &AppHandle) -> tauri::Result<Tray> {
    let status = MenuItem::with_id(
        app,
        "status",
        format!("{DEFAULT_MACHINE}: …"),
        false,
        None::<&str>,
    )?;
    let start = MenuItem::with_id(
        app,
        "start",
        format!("Start {DEFAULT_MACHINE}"),
        true,
        None::<&str>,
    )?;
    let stop = MenuItem::with_id(
        app,
        "stop",
        format!("Stop {DEFAULT_MACHINE}"),
        false,
        None::<&str>,
    )?;
    let show = MenuItem::with_id(app, "show", "Open rmachine Desktop", true, None::<&str>)?;
    let quit = MenuItem::with_id(app, "quit", "Quit", true, None::<&str>)?;
    let sep = PredefinedMenuItem::separator(app)?;
    let sep2 = PredefinedMenuItem::separator(app)?;
    let menu = Menu::with_items(app, &[&status, &sep, &start, &stop, &sep2, &show, &quit])?;
    let icon = TrayIconBuilder::with_id("main")
        .icon(Image::from_bytes(ICON_STOPPED)?)
        .tooltip("rmachine")
        .menu(&menu)
        .on_menu_event(|app, event| on_menu(app, event.id().as_ref()))
        .build(app)?;
    Ok(Tray {
        icon,
        status,
        start,
        stop,
    })
}

fn on_menu(app: &AppHandle, id: &str) {
    match id {
        "start" | "stop" => {
            let state = app.state::<AppState>();
            let lc = state.lc.clone();
            let app = app.clone();
            let start = id == "start";
            tauri::async_runtime::spawn(async move {
                let result = if start {
                    // The default machine is created on first start, as `rmachine start` does.
                    let lc2 = lc.clone();
                    match tauri::async_runtime::spawn_blocking(move || {
                        machines::ensure_default(&lc2)
                    })
                    .await
                    {
                        Ok(Ok(())) => commands::run_machine_op(
                            app,
                            lc,
                            DEFAULT_MACHINE.into(),
                            MachineOp::Start,
                        )
                        .await
                        .map(|_| ()),
                        Ok(Err(e)) => Err(e),
                        Err(e) => Err(CommandError::new(ErrorKind::Internal, e.to_string())),
                    }
                } else {
                    commands::run_machine_op(app, lc, DEFAULT_MACHINE.into(), MachineOp::Stop)
                        .await
                        .map(|_| ())
                };
                if let Err(e) = result {
                    tracing::error!(error = %e, "tray: {}", if start { "start" } else { "stop" });
                }
            });
        }
        "show" => {
            if let Some(w) = app.get_webview_window("main") {
                let _ = w.show();
                let _ = w.unminimize();
                let _ = w.set_focus();
            }
        }
        "quit" => app.exit(0),
        _ => {}
    }
}

impl Tray {
    /// Shows the default machine's state from a new machine list.
    pub fn update(&self, list: &MachineList) {
        let m = list.machines.iter().find(|m| m.name == DEFAULT_MACHINE);
        let state = m.map(|m| m.state.as_str()).unwrap_or("not created");
        let running = state == "running";
        let idle = matches!(state, "stopped" | "error" | "not created");
        let _ = self.status.set_text(format!("{DEFAULT_MACHINE}: {state}"));
        let _ = self.start.set_enabled(idle);
        let _ = self.stop.set_enabled(!idle);
        let _ = self
            .icon
            .set_tooltip(Some(format!("rmachine: {DEFAULT_MACHINE} {state}")));
        if let Ok(img) = Image::from_bytes(if running { ICON_RUNNING } else { ICON_STOPPED }) {
            let _ = self.icon.set_icon(Some(img));
        }
    }
}
