//! The tray through D-Bus, as a desktop panel sees it: the app runs under Xvfb with a
//! private session bus on which this test is the StatusNotifierWatcher (libayatana-
//! appindicator exports its item only when one is on the bus). The test finds the item the
//! app registers, reads its menu through `com.canonical.dbusmenu` (GetLayout) and clicks
//! items with its Event method, as a panel does: two `fake`-driver machines (no VM) show
//! their states; "Switch docker to this machine" makes the docker CLI's current context
//! the machine's; Start and Stop change the machine's state and the menu follows; Quit
//! ends the app.
//!
//! Needs: Xvfb (Debian package xvfb), dbus-daemon (dbus) and libayatana-appindicator3-1
//! (which libayatana-appindicator3-dev brings). Without Xvfb or dbus-daemon the test is skipped with
//! the reason, and fails when `CI=true`.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod support;

use rmachine_machine::config::{DriverKind, Settings};
use rmachine_machine::lifecycle::Lifecycle;
use rmachine_machine::paths::Paths;
use rmachine_machine::store::Store;
use zbus::zvariant::{OwnedValue, Value};

const USE_LABEL: &str = rmachine_desktop::tray::USE_LABEL;

fn which(bin: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(bin))
            .find(|p| p.is_file())
    })
}

/// The tools the test needs; `None` (and why) when one is missing outside CI.
fn tools() -> Option<(PathBuf, PathBuf)> {
    let missing: Vec<String> = [("Xvfb", "xvfb"), ("dbus-daemon", "dbus")]
        .into_iter()
        .filter(|(bin, _)| which(bin).is_none())
        .map(|(bin, pkg)| format!("{bin} not found: install the Debian package {pkg}"))
        .collect();
    if missing.is_empty() {
        return Some((which("Xvfb")?, which("dbus-daemon")?));
    }
    let why = format!(
        "{} (installers/linux/setup.sh installs them)",
        missing.join("; ")
    );
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{why}");
    }
    eprintln!("skipped (set CI=true to make this a failure): {why}");
    None
}

/// Processes killed when the test ends, however it ends.
struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in self.0.iter_mut().rev() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// An X display of our own (displays 300 and up: the window test takes them from 90).
fn start_xvfb(xvfb: &Path, tmp: &Path, procs: &mut Procs) -> String {
    let (x, display) = support::start_xvfb(xvfb, &tmp.join("xvfb.log"), 300..400);
    procs.0.push(x);
    format!(":{display}")
}

/// A session bus of our own: no service activation, so nothing else joins it.
fn start_bus(dbus_daemon: &Path, tmp: &Path, procs: &mut Procs) -> String {
    let config = tmp.join("bus.conf");
    std::fs::write(
        &config,
        format!(
            r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"#,
            tmp.join("bus").display()
        ),
    )
    .unwrap();
    let mut bus = Command::new(dbus_daemon)
        .arg(format!("--config-file={}", config.display()))
        .args(["--nofork", "--print-address"])
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(tmp.join("dbus.log")).unwrap())
        .spawn()
        .expect("start dbus-daemon");
    let stdout = bus.stdout.take().expect("piped stdout");
    procs.0.push(bus);
    let mut address = String::new();
    BufReader::new(stdout).read_line(&mut address).unwrap();
    let address = address.trim().to_string();
    assert!(
        !address.is_empty(),
        "dbus-daemon did not start: {}",
        std::fs::read_to_string(tmp.join("dbus.log")).unwrap_or_default()
    );
    address
}

/// The StatusNotifierWatcher: it records the items that register (their sender and the
/// service or object path they pass).
#[derive(Clone, Default)]
struct Watcher {
    items: Arc<Mutex<Vec<(String, String)>>>,
}

#[zbus::interface(name = "org.kde.StatusNotifierWatcher")]
impl Watcher {
    fn register_status_notifier_item(
        &self,
        service: &str,
        #[zbus(header)] header: zbus::message::Header<'_>,
    ) {
        let sender = header.sender().map(|s| s.to_string()).unwrap_or_default();
        self.items
            .lock()
            .unwrap()
            .push((sender, service.to_string()));
    }

    fn register_status_notifier_host(&self, _service: &str) {}

    #[zbus(property)]
    fn registered_status_notifier_items(&self) -> Vec<String> {
        let items = self.items.lock().unwrap();
        items.iter().map(|(_, s)| s.clone()).collect()
    }

    #[zbus(property)]
    fn is_status_notifier_host_registered(&self) -> bool {
        true
    }

    #[zbus(property)]
    fn protocol_version(&self) -> i32 {
        0
    }
}

/// A dbusmenu item: the properties the test reads, with the protocol's defaults.
#[derive(Debug, Clone)]
struct Node {
    id: i32,
    label: String,
    enabled: bool,
    children: Vec<Node>,
}

impl Node {
    /// An item of the layout: a `(ia{sv}av)` structure.
    fn parse(v: &Value<'_>) -> Node {
        let v = match v {
            Value::Value(inner) => inner,
            v => v,
        };
        let Value::Structure(s) = v else {
            panic!("a dbusmenu layout item is (ia{{sv}}av), not {v:?}");
        };
        let [Value::I32(id), Value::Dict(props), Value::Array(children)] = s.fields() else {
            panic!("a dbusmenu layout item is (ia{{sv}}av), not {s:?}");
        };
        let props = props.iter().filter_map(|(k, v)| match k {
            Value::Str(k) => Some((k.as_str(), v)),
            _ => None,
        });
        Node::new(
            *id,
            props,
            children.inner().iter().map(Node::parse).collect(),
        )
    }

    fn new<'v>(
        id: i32,
        props: impl Iterator<Item = (&'v str, &'v Value<'v>)>,
        children: Vec<Node>,
    ) -> Node {
        let mut node = Node {
            id,
            label: String::new(),
            enabled: true,
            children,
        };
        for (k, v) in props {
            let v = match v {
                Value::Value(inner) => &**inner,
                v => v,
            };
            match (k, v) {
                ("label", Value::Str(s)) => node.label = s.to_string(),
                ("enabled", Value::Bool(b)) => node.enabled = *b,
                _ => {}
            }
        }
        node
    }

    /// The item labelled `label` under this one (at any depth).
    fn find(&self, label: &str) -> Option<&Node> {
        self.children
            .iter()
            .find(|c| c.label == label)
            .or_else(|| self.children.iter().find_map(|c| c.find(label)))
    }

    /// The labels of the top-level items.
    fn labels(&self) -> Vec<&str> {
        self.children.iter().map(|c| c.label.as_str()).collect()
    }
}

/// The tray's menu, reached over the bus.
struct Menu {
    conn: zbus::blocking::Connection,
    dest: String,
    path: zbus::zvariant::OwnedObjectPath,
}

type Layout = (i32, HashMap<String, OwnedValue>, Vec<OwnedValue>);

impl Menu {
    fn layout(&self) -> Node {
        let reply = self
            .conn
            .call_method(
                Some(self.dest.as_str()),
                &self.path,
                Some("com.canonical.dbusmenu"),
                "GetLayout",
                &(0i32, -1i32, Vec::<String>::new()),
            )
            .expect("dbusmenu GetLayout");
        let (_revision, (id, props, children)): (u32, Layout) =
            reply.body().deserialize().expect("GetLayout's reply");
        Node::new(
            id,
            props.iter().map(|(k, v)| (k.as_str(), &**v)),
            children.iter().map(|c| Node::parse(c)).collect(),
        )
    }

    /// Clicks an item, as a panel does when the user picks it.
    fn click(&self, id: i32) {
        self.conn
            .call_method(
                Some(self.dest.as_str()),
                &self.path,
                Some("com.canonical.dbusmenu"),
                "Event",
                &(id, "clicked", Value::I32(0), 0u32),
            )
            .expect("dbusmenu Event");
    }

    /// Waits until the layout satisfies `ok`; returns it.
    fn wait_for(&self, what: &str, app_log: &Path, ok: impl Fn(&Node) -> bool) -> Node {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let layout = self.layout();
            if ok(&layout) {
                return layout;
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out waiting for {what}; the menu: {:?}\n{}",
                    layout.labels(),
                    log_tail(app_log)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    format!(
        "the app's log ({}):\n{}",
        log.display(),
        lines[lines.len().saturating_sub(40)..].join("\n")
    )
}

/// The item `label` in `machine`'s submenu.
fn item<'a>(layout: &'a Node, machine: &str, label: &str) -> &'a Node {
    let sub = layout
        .children
        .iter()
        .find(|c| c.label.starts_with(&format!("{machine}: ")))
        .unwrap_or_else(|| panic!("no submenu for {machine}: {:?}", layout.labels()));
    sub.find(label)
        .unwrap_or_else(|| panic!("no {label:?} in {machine}'s submenu: {sub:?}"))
}

fn state(lc: &Lifecycle, name: &str) -> String {
    lc.summary(name).expect("machine summary").state
}

fn wait_until(what: &str, app_log: &Path, ok: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ok() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}\n{}",
            log_tail(app_log)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn test_tray_menu_over_dbus_drives_machines() {
    let Some((xvfb, dbus_daemon)) = tools() else {
        return;
    };
    let began = Instant::now();
    let tmp = tempfile::Builder::new()
        .prefix("rmd-tray-")
        .tempdir_in("/tmp")
        .unwrap();
    let (home, cache, docker) = (
        tmp.path().join("home"),
        tmp.path().join("cache"),
        tmp.path().join("docker"),
    );
    let lc = Lifecycle::new(Store::new(Paths::with_roots(&home, &cache)), docker.clone());
    let fake = Settings {
        driver: Some(DriverKind::Fake),
        ..Settings::default()
    };
    lc.create("alpha", &fake).unwrap();
    lc.create("beta", &fake).unwrap();
    lc.start("beta", &mut |_| {}).unwrap();
    assert_eq!(lc.current_context(), None);

    let mut procs = Procs(Vec::new());
    let display = start_xvfb(&xvfb, tmp.path(), &mut procs);
    let address = start_bus(&dbus_daemon, tmp.path(), &mut procs);
    let watcher = Watcher::default();
    let conn = zbus::blocking::connection::Builder::address(address.as_str())
        .unwrap()
        .name("org.kde.StatusNotifierWatcher")
        .unwrap()
        .serve_at("/StatusNotifierWatcher", watcher.clone())
        .unwrap()
        .build()
        .expect("the StatusNotifierWatcher on the test's bus");

    let runtime = tmp.path().join("run");
    std::fs::create_dir_all(&runtime).unwrap();
    let app_log = tmp.path().join("app.log");
    let app = Command::new(env!("CARGO_BIN_EXE_rmachine-desktop"))
        .env("RMACHINE_HOME", &home)
        .env("RMACHINE_CACHE", &cache)
        .env("DOCKER_CONFIG", &docker)
        .env("DISPLAY", &display)
        .env("DBUS_SESSION_BUS_ADDRESS", &address)
        .env("XDG_RUNTIME_DIR", &runtime)
        // No accessibility bus or dconf to look for on the private bus.
        .env("NO_AT_BRIDGE", "1")
        .env("GSETTINGS_BACKEND", "memory")
        .env("RMACHINE_LOG", "info")
        .env_remove("WAYLAND_DISPLAY")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&app_log).unwrap())
        .spawn()
        .expect("start rmachine-desktop");
    procs.0.push(app);

    // The item registers with the watcher; its Menu property names the dbusmenu object.
    wait_until(
        "the tray's StatusNotifierItem to register (is libayatana-appindicator3-1 installed?)",
        &app_log,
        || !watcher.items.lock().unwrap().is_empty(),
    );
    let registered = Instant::now();
    let (sender, service) = watcher.items.lock().unwrap()[0].clone();
    let (dest, item_path) = if service.starts_with('/') {
        (sender, service)
    } else {
        (service, "/StatusNotifierItem".to_string())
    };
    eprintln!(
        "item {dest} {item_path} registered {:.1} s after the start",
        began.elapsed().as_secs_f64()
    );
    let reply = conn
        .call_method(
            Some(dest.as_str()),
            item_path.as_str(),
            Some("org.freedesktop.DBus.Properties"),
            "Get",
            &("org.kde.StatusNotifierItem", "Menu"),
        )
        .expect("the item's Menu property");
    let menu_path: OwnedValue = reply.body().deserialize().expect("a variant");
    let path = zbus::zvariant::OwnedObjectPath::try_from(menu_path).expect("an object path");
    let menu = Menu { conn, dest, path };

    // Both machines, with their states; actions enabled by state.
    let layout = menu.wait_for("both machines in the menu", &app_log, |l| {
        l.find("alpha: stopped").is_some() && l.find("beta: running").is_some()
    });
    eprintln!(
        "menu {:?}, {:.1} s after registering",
        layout.labels(),
        registered.elapsed().as_secs_f64()
    );
    assert_eq!(
        layout.labels(),
        [
            "alpha: stopped",
            "beta: running",
            "",
            "Open rmachine Desktop",
            "Quit"
        ]
    );
    let enabled = |m: &str, l: &str| item(&layout, m, l).enabled;
    assert!(enabled("alpha", "Start") && !enabled("alpha", "Stop"));
    assert!(!enabled("alpha", "Restart"));
    assert!(!enabled("beta", "Start") && enabled("beta", "Stop"));
    assert!(enabled("beta", "Restart"));
    for m in ["alpha", "beta"] {
        assert!(enabled(m, USE_LABEL) && enabled(m, "Open window"), "{m}");
    }

    // Switch docker to alpha: the docker CLI's current context changes, the menu shows it.
    menu.click(item(&layout, "alpha", USE_LABEL).id);
    wait_until("docker's current context to be alpha's", &app_log, || {
        lc.current_context().as_deref() == Some("rmachine-alpha")
    });
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(docker.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["currentContext"], "rmachine-alpha");
    let layout = menu.wait_for("alpha marked as docker's", &app_log, |l| {
        l.find("alpha: stopped (docker)").is_some()
    });
    assert!(!item(&layout, "alpha", USE_LABEL).enabled);
    assert!(item(&layout, "beta", USE_LABEL).enabled);

    // Start alpha, stop beta: the states change and the labels follow.
    menu.click(item(&layout, "alpha", "Start").id);
    wait_until("alpha running", &app_log, || {
        state(&lc, "alpha") == "running"
    });
    let layout = menu.wait_for("alpha running in the menu", &app_log, |l| {
        l.find("alpha: running (docker)").is_some()
    });
    assert!(!item(&layout, "alpha", "Start").enabled && item(&layout, "alpha", "Stop").enabled);
    // Restart alpha: the fake driver stops and starts it, writing its state file again.
    let state_file = lc.store().paths().machine("alpha").state();
    let modified = || {
        std::fs::metadata(&state_file)
            .and_then(|m| m.modified())
            .ok()
    };
    let before = modified();
    menu.click(item(&layout, "alpha", "Restart").id);
    wait_until("alpha restarted", &app_log, || {
        modified() != before && state(&lc, "alpha") == "running"
    });
    menu.click(item(&layout, "beta", "Stop").id);
    wait_until("beta stopped", &app_log, || state(&lc, "beta") == "stopped");
    let layout = menu.wait_for("beta stopped in the menu", &app_log, |l| {
        l.find("beta: stopped").is_some()
    });
    assert!(item(&layout, "beta", "Start").enabled && !item(&layout, "beta", "Restart").enabled);

    // A machine made behind the app's back appears (the app watches the machines folder).
    lc.create("gamma", &fake).unwrap();
    menu.wait_for("gamma in the menu", &app_log, |l| {
        l.find("gamma: stopped").is_some()
    });

    // "Open window" shows the window on the machine's page (what the window shows is not
    // read here: that takes WebDriver, see window.rs); the app takes the click and goes on.
    let layout = menu.layout();
    menu.click(item(&layout, "gamma", "Open window").id);

    // Quit ends the app.
    let layout = menu.layout();
    menu.click(layout.find("Quit").expect("Quit").id);
    let app = procs.0.last_mut().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = app.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the app did not quit\n{}",
            log_tail(&app_log)
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "{status}\n{}", log_tail(&app_log));
    eprintln!("done in {:.1} s", began.elapsed().as_secs_f64());
}
