//! The real window under Xvfb, driven through WebDriver (WebKitWebDriver, Debian's
//! webkit2gtk-driver, talking to the app's WebKitGTK view as tauri-driver would): create
//! a QEMU machine and start it from the Machines page, see a container made through the
//! machine's docker.sock running in the Containers page, stop it from there, see its
//! state change, visit every page, and stop the machine. A PNG of each page is written to
//! `target/desktop-screenshots/` (printed).
//!
//! Needs: Xvfb (xvfb), WebKitWebDriver (webkit2gtk-driver), the docker CLI, busybox-static,
//! QEMU and the guest image (`rmachine image build`). A missing one fails the test and
//! says what to install.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};

mod support;
use support::{profile_dir, rmachine_bin};

const ELEMENT: &str = "element-6066-11e4-a23f-4a2e7d42a7ea";

fn which(bin: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(bin))
            .find(|p| p.is_file())
    })
}

fn require(bin: &str, package: &str) -> PathBuf {
    which(bin).unwrap_or_else(|| {
        panic!(
            "{bin} not found: install the Debian package {package} (see installers/linux/setup.sh)"
        )
    })
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Processes killed when the test ends, however it ends.
struct Procs(Vec<(&'static str, Child)>);

impl Drop for Procs {
    fn drop(&mut self) {
        for (_, c) in self.0.iter_mut().rev() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Stops the test machine however the test ends (a running VM must not outlive it).
struct MachineGuard {
    rmachine: PathBuf,
    env: Vec<(String, String)>,
    name: &'static str,
}

impl Drop for MachineGuard {
    fn drop(&mut self) {
        let _ = Command::new(&self.rmachine)
            .args(["stop", "--force", self.name])
            .envs(self.env.clone())
            .status();
    }
}

/// A minimal W3C WebDriver client.
struct Driver {
    base: String,
    session: String,
    shots: PathBuf,
}

impl Driver {
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.try_call(method, path, body)
            .unwrap_or_else(|e| panic!("webdriver {method} {path}: {e}"))
    }

    /// A WebDriver command; an error status comes back as its code and body.
    fn try_call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let req = ureq::request(method, &url).timeout(Duration::from_secs(60));
        let resp = match body {
            Some(b) => req.send_json(b),
            None => req.call(),
        };
        match resp {
            Ok(r) => Ok(r.into_json::<Value>().expect("webdriver json")["value"].take()),
            Err(ureq::Error::Status(code, r)) => {
                Err(format!("{code} {}", r.into_string().unwrap_or_default()))
            }
            Err(e) => panic!("webdriver {method} {path}: {e}"),
        }
    }

    fn js(&self, script: &str) -> Value {
        self.call(
            "POST",
            "/execute/sync",
            Some(json!({ "script": script, "args": [] })),
        )
    }

    fn find(&self, css: &str) -> String {
        let v = self.call(
            "POST",
            "/element",
            Some(json!({ "using": "css selector", "value": css })),
        );
        // The W3C key, or the one this WebKitWebDriver uses: the object's only value.
        v.get(ELEMENT)
            .or_else(|| {
                v.as_object().and_then(|o| {
                    o.iter()
                        .find(|(k, _)| k.starts_with("element-"))
                        .map(|(_, id)| id)
                })
            })
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("no element {css}: {v}"))
            .to_string()
    }

    /// Clicks the element `css` names. The UI re-renders a list when the machine's state
    /// changes, which can replace the element between finding and clicking it ("stale element
    /// reference"): then the current one is found and clicked, as a person would.
    fn click(&self, css: &str) {
        for attempt in 1.. {
            let id = self.find(css);
            match self.try_call("POST", &format!("/element/{id}/click"), Some(json!({}))) {
                Ok(_) => return,
                Err(e) if e.contains("stale element reference") && attempt < 5 => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => panic!("webdriver click on {css}: {e}"),
            }
        }
    }

    fn type_into(&self, css: &str, text: &str) {
        let id = self.find(css);
        self.call("POST", &format!("/element/{id}/clear"), Some(json!({})));
        self.call(
            "POST",
            &format!("/element/{id}/value"),
            Some(json!({ "text": text })),
        );
    }

    /// Waits until `script` (an expression) is truthy; returns its value.
    fn wait_for(&self, what: &str, expr: &str, timeout: Duration) -> Value {
        self.wait_for_unless(what, expr, "false", timeout)
    }

    /// Waits until `expr` is truthy, failing at once when `failed` (an expression) is.
    fn wait_for_unless(&self, what: &str, expr: &str, failed: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        let script = format!("try {{ return ({expr}) || null; }} catch (e) {{ return null; }}");
        let failed_script = format!("try {{ return !!({failed}); }} catch (e) {{ return false; }}");
        loop {
            let v = self.js(&script);
            if !v.is_null() && v != json!(false) {
                return v;
            }
            if self.js(&failed_script) == json!(true) {
                let page = self.js("return document.querySelector('main').innerText");
                self.screenshot(&format!("failed-{}", what.replace(' ', "-")));
                panic!(
                    "gave up waiting for {what}: {failed} holds; the page says:\n{}",
                    page.as_str().unwrap_or("")
                );
            }
            if Instant::now() > deadline {
                let page = self.js("return document.querySelector('main').innerText");
                self.screenshot(&format!("failed-{}", what.replace(' ', "-")));
                panic!(
                    "timed out after {timeout:?} waiting for {what}; the page says:\n{}",
                    page.as_str().unwrap_or("")
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Runs `script` (a function body that calls `done(value)`) and returns the value.
    fn js_async(&self, script: &str) -> Value {
        let body = format!("const done = arguments[arguments.length - 1]; {script}");
        self.call(
            "POST",
            "/execute/async",
            Some(json!({ "script": body, "args": [] })),
        )
    }

    /// The app's count of streams holding a connection open (`live_streams`).
    fn live_streams(&self) -> Value {
        self.js_async(
            "window.__TAURI__.core.invoke('live_streams').then(done, (e) => done({ error: String(e.message || e) }));",
        )
    }

    /// Types into the focused element (the terminal's input), key by key, as a person
    /// would; `\u{E007}` is Enter.
    fn type_keys(&self, text: &str) {
        let keys: Vec<Value> = text
            .chars()
            .flat_map(|c| {
                [
                    json!({ "type": "keyDown", "value": c.to_string() }),
                    json!({ "type": "keyUp", "value": c.to_string() }),
                ]
            })
            .collect();
        self.call(
            "POST",
            "/actions",
            Some(json!({ "actions": [{ "type": "key", "id": "keyboard", "actions": keys }] })),
        );
        let _ = self.try_call("DELETE", "/actions", None);
    }

    /// Presses Ctrl+`key` (keyboard actions: Control held while the key goes down and up).
    fn ctrl(&self, key: &str) {
        self.call(
            "POST",
            "/actions",
            Some(
                json!({ "actions": [{ "type": "key", "id": "keyboard", "actions": [
                { "type": "keyDown", "value": "\u{E009}" },
                { "type": "keyDown", "value": key },
                { "type": "keyUp", "value": key },
                { "type": "keyUp", "value": "\u{E009}" },
            ] }] }),
            ),
        );
        let _ = self.try_call("DELETE", "/actions", None);
    }

    /// Waits until the terminal shows `text`.
    fn wait_terminal(&self, what: &str, text: &str) {
        let expr = format!(
            "document.querySelector('#terminal .xterm-rows')?.textContent.includes({})",
            json!(text)
        );
        self.wait_for_unless(
            what,
            &expr,
            "document.querySelector('#terminal')?.dataset.error",
            Duration::from_secs(60),
        );
    }

    fn screenshot(&self, name: &str) {
        // Let the last change paint.
        std::thread::sleep(Duration::from_millis(500));
        let v = self.call("GET", "/screenshot", None);
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap_or(""))
            .expect("screenshot base64");
        let path = self.shots.join(format!("{name}.png"));
        std::fs::write(&path, png).expect("write screenshot");
        eprintln!("screenshot {}", path.display());
    }
}

fn start_session(base: &str, app: &Path, shots: PathBuf) -> Driver {
    let deadline = Instant::now() + Duration::from_secs(30);
    let caps = json!({ "capabilities": { "alwaysMatch": {
        "webkitgtk:browserOptions": { "binary": app.display().to_string(), "args": [] }
    } } });
    loop {
        match ureq::post(&format!("{base}/session"))
            .timeout(Duration::from_secs(60))
            .send_json(caps.clone())
        {
            Ok(r) => {
                let v: Value = r.into_json().expect("session json");
                let session = v["value"]["sessionId"]
                    .as_str()
                    .expect("sessionId")
                    .to_string();
                return Driver {
                    base: base.to_string(),
                    session,
                    shots,
                };
            }
            Err(e) if Instant::now() < deadline => {
                eprintln!("waiting for WebKitWebDriver: {e}");
                std::thread::sleep(Duration::from_millis(300));
            }
            Err(e) => panic!("cannot start a WebDriver session with the app: {e}"),
        }
    }
}

fn docker(socket: &Path, args: &[&str]) -> String {
    let out = Command::new("docker")
        .env("DOCKER_HOST", format!("unix://{}", socket.display()))
        .env_remove("DOCKER_CONTEXT")
        .args(args)
        .output()
        .expect("run the docker CLI");
    assert!(
        out.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn busybox_tarball(dir: &Path) -> PathBuf {
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("busybox not found: install the Debian package busybox-static");
    let root = dir.join("busybox-root");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    for d in ["etc", "tmp", "proc", "sys", "dev"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy(&busybox, root.join("bin/busybox")).unwrap();
    for applet in ["sh", "sleep", "echo", "httpd", "stty", "printf", "cat"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    let tarball = dir.join("busybox.tar");
    let ok = Command::new("tar")
        .arg("-C")
        .arg(&root)
        .arg("-cf")
        .arg(&tarball)
        .arg(".")
        .status()
        .unwrap()
        .success();
    assert!(ok, "tar failed");
    tarball
}

#[test]
fn test_window_starts_machine_and_stops_container() {
    let xvfb = require("Xvfb", "xvfb");
    let webdriver = require("WebKitWebDriver", "webkit2gtk-driver");
    require("docker", "docker.io (or docker-cli)");
    require("qemu-system-x86_64", "qemu-system-x86");
    let user_home = PathBuf::from(std::env::var("HOME").expect("HOME"));
    let images = std::env::var_os("RMACHINE_HOME")
        .map(|h| PathBuf::from(h).join("images"))
        .unwrap_or_else(|| user_home.join(".local/share/rmachine/images"));
    assert!(
        std::fs::read_dir(&images).map(|mut d| d.next().is_some()).unwrap_or(false),
        "no guest image in {}: build it first (`rmachine image build`, as installers/linux/setup.sh does)",
        images.display()
    );
    let app = PathBuf::from(env!("CARGO_BIN_EXE_rmachine-desktop"));
    let rmachine = rmachine_bin();

    let tmp = tempfile::Builder::new()
        .prefix("rmd-")
        .tempdir_in("/tmp")
        .unwrap();
    let home = tmp.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    std::os::unix::fs::symlink(&images, home.join("images")).unwrap();
    // Defaults for new machines: the first-run machine is small and runs under QEMU.
    std::fs::write(
        home.join("defaults.toml"),
        "driver = \"qemu\"\ncpus = 2\nmemory_mib = 2048\ndisk_size_gib = 8\n",
    )
    .unwrap();
    let downloads = tmp.path().join("Downloads");
    let docker_config = tmp.path().join("docker");
    std::fs::create_dir_all(&docker_config).unwrap();
    // The user's docker CLI plugins (compose), which `rmachine setup` installs.
    let user_plugins = std::env::var_os("DOCKER_CONFIG")
        .map(PathBuf::from)
        .unwrap_or_else(|| user_home.join(".docker"))
        .join("cli-plugins");
    assert!(
        user_plugins.join("docker-compose").exists(),
        "no docker compose plugin in {}: install it with `rmachine setup` (as installers/linux/setup.sh does)",
        user_plugins.display()
    );
    std::os::unix::fs::symlink(&user_plugins, docker_config.join("cli-plugins")).unwrap();
    let shots = profile_dir()
        .parent()
        .expect("target dir")
        .join("desktop-screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    eprintln!("screenshots go to {}", shots.display());

    let env: Vec<(String, String)> = vec![
        ("RMACHINE_HOME".into(), home.display().to_string()),
        ("DOCKER_CONFIG".into(), docker_config.display().to_string()),
        ("RMACHINE_BIN".into(), rmachine.display().to_string()),
        // Downloads go to the Downloads folder, without a file chooser the test cannot click.
        ("RMACHINE_DESKTOP_NO_FILE_DIALOG".into(), "1".into()),
        ("XDG_DOWNLOAD_DIR".into(), downloads.display().to_string()),
    ];
    let _guard = MachineGuard {
        rmachine: rmachine.clone(),
        env: env.clone(),
        name: "default",
    };

    // An X display of our own.
    let mut procs = Procs(Vec::new());
    let (x, display) = support::start_xvfb(&xvfb, &tmp.path().join("xvfb.log"), 90..200);
    procs.0.push(("Xvfb", x));

    let port = free_port();
    let wd = Command::new(&webdriver)
        .arg(format!("--port={port}"))
        .envs(env.clone())
        .env("DISPLAY", format!(":{display}"))
        .env("TAURI_WEBVIEW_AUTOMATION", "true")
        .env("RMACHINE_LOG", "info")
        .env_remove("WAYLAND_DISPLAY")
        .stdout(std::fs::File::create(tmp.path().join("webdriver.log")).unwrap())
        .stderr(std::fs::File::create(tmp.path().join("app.log")).unwrap())
        .spawn()
        .expect("start WebKitWebDriver");
    procs.0.push(("WebKitWebDriver", wd));

    let d = start_session(&format!("http://127.0.0.1:{port}"), &app, shots.clone());
    // The smallest size the UI is meant for.
    d.call(
        "POST",
        "/window/rect",
        Some(json!({ "width": 1024, "height": 700 })),
    );

    // Machines: empty; the first-run offer says what `default` will be and run on (the
    // test's defaults: QEMU, 2 CPUs, 2 GiB, 8 GiB) before anything starts.
    d.wait_for(
        "the empty machine list",
        "document.querySelector('#no-machines')",
        Duration::from_secs(30),
    );
    let plan = d.wait_for(
        "the first-run plan",
        "document.querySelector('#first-run-why') && document.querySelector('#no-machines').innerText",
        Duration::from_secs(30),
    );
    let plan = plan.as_str().unwrap_or("").to_string();
    assert!(
        plan.contains("2 CPUs") && plan.contains("QEMU") && plan.contains("Why: --driver qemu"),
        "{plan}"
    );
    assert!(
        plan.contains("software emulation") || plan.contains("hardware virtualization"),
        "{plan}"
    );
    d.screenshot("1-machines-empty-first-run");
    // One button creates and starts it: progress shows, then running.
    let started = Instant::now();
    d.click("#first-run-start");
    d.wait_for("the starting state", "['starting','running'].includes(document.querySelector('#machine-default .badge')?.dataset.state)", Duration::from_secs(30));
    d.screenshot("3-machines-starting");
    d.wait_for_unless(
        "the machine running",
        "document.querySelector('#machine-default')?.dataset.state === 'running'",
        "document.querySelector('#machine-default')?.dataset.state === 'error'",
        Duration::from_secs(600),
    );
    eprintln!(
        "machine running {:.1} s after the click",
        started.elapsed().as_secs_f64()
    );
    d.click("#machine-default [data-action='use']");
    d.wait_for(
        "the active machine",
        "document.querySelector('#machine-default .active-tag')",
        Duration::from_secs(10),
    );
    d.screenshot("4-machines-running");

    // A container, made behind the app's back through the machine's docker.sock.
    let socket = home.join("machines/default/docker.sock");
    let tarball = busybox_tarball(tmp.path());
    docker(
        &socket,
        &["import", &tarball.display().to_string(), "busybox-gui:1"],
    );
    docker(
        &socket,
        &[
            "run",
            "-d",
            "--name",
            "sleeper",
            "-p",
            "18080:80",
            "busybox-gui:1",
            "sleep",
            "300",
        ],
    );
    docker(
        &socket,
        &[
            "run",
            "-d",
            "--name",
            "shop-web",
            "--label",
            "com.docker.compose.project=shop",
            "--label",
            "com.docker.compose.service=web",
            "busybox-gui:1",
            "sleep",
            "300",
        ],
    );
    docker(&socket, &["volume", "create", "gui-data"]);

    // Containers: the running container is there (the list follows engine events).
    d.click("#nav-containers");
    d.wait_for(
        "the running container",
        "document.querySelector('tr[data-name=\"sleeper\"]')?.dataset.state === 'running'",
        Duration::from_secs(60),
    );
    d.wait_for("the compose group", "document.querySelector('section[aria-label=\"Compose project shop\"] tr[data-name=\"shop-web\"]')", Duration::from_secs(30));
    let link = d.js(
        "return document.querySelector('tr[data-name=\"sleeper\"] a.port')?.getAttribute('href')",
    );
    assert_eq!(link, json!("http://localhost:18080"), "published port link");
    d.screenshot("5-containers-running");

    // Inspect shows formatted JSON.
    d.click("tr[data-name='sleeper'] [data-action='inspect']");
    d.wait_for(
        "the inspect document",
        "document.querySelector('#text-body').textContent.includes('\"Id\"')",
        Duration::from_secs(30),
    );
    d.screenshot("6-container-inspect");
    d.click("#text-close");

    // Stop it from the UI and see the state change.
    d.click("tr[data-name='sleeper'] [data-action='stop']");
    d.wait_for(
        "the stopped container",
        "document.querySelector('tr[data-name=\"sleeper\"]')?.dataset.state === 'exited'",
        Duration::from_secs(60),
    );
    d.screenshot("7-containers-stopped");

    // Live updates: a container made while the page is open shows up (engine events).
    docker(
        &socket,
        &[
            "run",
            "-d",
            "--name",
            "late",
            "busybox-gui:1",
            "sleep",
            "300",
        ],
    );
    d.wait_for(
        "the container made after the page loaded",
        "document.querySelector('tr[data-name=\"late\"]')?.dataset.state === 'running'",
        Duration::from_secs(30),
    );

    // A terminal in a container: its size, output with colours, Ctrl-C, a resize, and the
    // exit status.
    let step = Instant::now();
    d.click("tr[data-name='late'] [data-action='terminal']");
    d.wait_for_unless(
        "the container's shell prompt",
        "document.querySelector('#terminal-status').textContent === 'connected' && document.querySelector('#terminal .xterm-rows')?.textContent.includes('#')",
        "document.querySelector('#terminal')?.dataset.error",
        Duration::from_secs(60),
    );
    let size = |d: &Driver| {
        let v = d.js("const t = document.querySelector('#terminal'); return `${t.dataset.rows} ${t.dataset.cols}`;");
        v.as_str().unwrap().to_string()
    };
    let first = size(&d);
    d.type_keys("stty size\u{E007}");
    d.wait_terminal("stty size", &first);
    d.type_keys(
        "echo hi-$((6*7)); printf '\\033[1;31mred\\033[0m \\033[32mgreen\\033[0m\\n'\u{E007}",
    );
    d.wait_terminal("echo's output", "hi-42");
    d.wait_terminal("printf's colours", "red green");
    d.type_keys("sleep 100\u{E007}");
    std::thread::sleep(Duration::from_millis(500));
    d.ctrl("c");
    d.type_keys("echo status=$?\u{E007}");
    d.wait_terminal("sleep interrupted by Ctrl-C", "status=130");
    d.screenshot("16-container-terminal");
    // A larger window: the terminal follows and so does the container's TTY.
    d.call(
        "POST",
        "/window/rect",
        Some(json!({ "width": 1240, "height": 780 })),
    );
    d.wait_for(
        "the terminal resized",
        &format!("(() => {{ const t = document.querySelector('#terminal'); return `${{t.dataset.rows}} ${{t.dataset.cols}}` !== {}; }})()", json!(first)),
        Duration::from_secs(10),
    );
    std::thread::sleep(Duration::from_millis(300));
    let second = size(&d);
    d.type_keys("clear; stty size\u{E007}");
    d.wait_terminal("stty size after the resize", &second);
    d.type_keys("exit 3\u{E007}");
    d.wait_for(
        "the exit status",
        "document.querySelector('#terminal')?.dataset.exit === '3' && document.querySelector('#terminal-status').textContent === 'exited with status 3'",
        Duration::from_secs(30),
    );
    d.screenshot("17-container-terminal-exited");
    d.click("#terminal-close");
    d.call(
        "POST",
        "/window/rect",
        Some(json!({ "width": 1024, "height": 700 })),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while d.live_streams()["terminals"] != json!(0) {
        assert!(
            Instant::now() < deadline,
            "a terminal session outlived its dialog: {}",
            d.live_streams()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("terminal steps: {:.1} s", step.elapsed().as_secs_f64());

    // Live charts of a container burning CPU: the CPU chart climbs, and settles when the
    // container stops; its stream ends with it.
    let step = Instant::now();
    docker(
        &socket,
        &[
            "run",
            "-d",
            "--name",
            "burner",
            "--stop-timeout",
            "1",
            "busybox-gui:1",
            "sh",
            "-c",
            "while :; do :; done",
        ],
    );
    // The list's summary column: the busy container's CPU climbs there too (asked every
    // 5 s while the list shows, one stats document each), beside its memory and limit.
    d.wait_for(
        "the list's CPU column climbing",
        "(() => { const r = document.querySelector(\"tr[data-name='burner']\"); if (!r) return false; const c = parseFloat(r.querySelector('[data-usage=cpu]').textContent); return c > 20 && r.querySelector('[data-usage=mem]').textContent.includes(' / '); })()",
        Duration::from_secs(60),
    );
    d.screenshot("17b-containers-usage");
    d.click("tr[data-name='burner'] [data-action='details']");
    let cpu = d.wait_for_unless(
        "the CPU chart climbing",
        "(() => { const v = parseFloat(document.querySelector('#chart-cpu')?.dataset.last); return v > 20 && document.querySelector('#chart-net .chart-value').textContent.startsWith('↓') && document.querySelector('#chart-blk .chart-value').textContent.startsWith('read') ? v : null; })()",
        "document.querySelector('#container-charts')?.dataset.ended",
        Duration::from_secs(60),
    );
    eprintln!("burner at {cpu} % CPU");
    assert_eq!(
        d.live_streams()["stats"],
        json!(1),
        "one stats stream while the view shows"
    );
    d.screenshot("18-container-charts");
    d.click("#container-stop");
    d.wait_for(
        "the CPU chart settled",
        "document.querySelector('#container-charts')?.dataset.ended === 'true' && parseFloat(document.querySelector('#chart-cpu').dataset.last) < 5 && document.querySelector('#container-state .badge')?.dataset.state === 'exited'",
        Duration::from_secs(60),
    );
    d.screenshot("19-container-charts-stopped");
    assert_eq!(
        d.live_streams()["stats"],
        json!(0),
        "the stream ended with the container"
    );
    eprintln!(
        "container chart steps: {:.1} s",
        step.elapsed().as_secs_f64()
    );

    // The machine's charts and its shell (the agent's exec service, as `rmachine shell`);
    // leaving the view closes its stream.
    let step = Instant::now();
    d.click("#nav-machines");
    d.click("#machine-default [data-action='details']");
    d.wait_for_unless(
        "the machine's figures",
        "parseFloat(document.querySelector('#chart-guest-mem')?.dataset.last) > 0 && parseFloat(document.querySelector('#chart-host-mem')?.dataset.last) > 0 && document.querySelector('#chart-guest-cpu')?.dataset.points >= 3 && document.querySelector('#chart-host-cpu')?.dataset.last !== ''",
        "document.querySelector('#machine-stream-status')?.textContent.startsWith('No live')",
        Duration::from_secs(60),
    );
    assert_eq!(d.live_streams()["stats"], json!(1), "the machine's stream");
    // The data disk: what the engine's images take (the imported busybox at least), and
    // the sparse file's blocks on the host.
    d.wait_for(
        "the data disk's figures",
        "(() => { const t = document.querySelector('#machine-disk')?.textContent || ''; return t.includes('on the host') && /images [1-9]/.test(t); })()",
        Duration::from_secs(30),
    );
    d.screenshot("20-machine-charts");
    d.click("#machine-shell");
    d.wait_for_unless(
        "the machine's shell",
        "document.querySelector('#terminal-status').textContent === 'connected' && document.querySelector('#terminal .xterm-rows')?.textContent.includes('#')",
        "document.querySelector('#terminal')?.dataset.error",
        Duration::from_secs(60),
    );
    d.type_keys("echo machine-$((2+3))\u{E007}");
    d.wait_terminal("the guest's answer", "machine-5");
    d.screenshot("21-machine-shell");
    d.type_keys("exit 4\u{E007}");
    d.wait_for(
        "the shell's exit status",
        "document.querySelector('#terminal')?.dataset.exit === '4'",
        Duration::from_secs(30),
    );
    d.click("#terminal-close");
    d.click("#machine-back");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = d.live_streams();
        if s["stats"] == json!(0) && s["terminals"] == json!(0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "streams left open after the views closed: {s}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!(
        "machine chart and shell steps: {:.1} s",
        step.elapsed().as_secs_f64()
    );

    // Build and run: an image built from a folder (its Dockerfile FROM the image imported
    // above, a build argument, a .dockerignore), run with a published port and
    // environment; its log searched, filtered, shown with timestamps and downloaded; the
    // image saved, removed and loaded again, and run.
    let step = Instant::now();
    let ctx = tmp.path().join("site-src");
    std::fs::create_dir_all(ctx.join("site")).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM busybox-gui:1\nARG GREETING=unset\nCOPY site/ /www/\nRUN echo \"arg=$GREETING\" > /www/arg.txt\n\
         CMD [\"sh\", \"-c\", \"echo hello from $NAME; echo second line; echo oops >&2; exec httpd -f -p 80 -h /www\"]\n",
    )
    .unwrap();
    std::fs::write(ctx.join("site/index.html"), "built-page\n").unwrap();
    std::fs::write(ctx.join("site/secret.txt"), "not for the image\n").unwrap();
    std::fs::write(
        ctx.join(".dockerignore"),
        "# keep the secret out\nsite/secret.txt\n",
    )
    .unwrap();
    d.click("#nav-images");
    d.click("#build-image");
    d.wait_for(
        "the build form",
        "!document.querySelector('#page-build').hidden",
        Duration::from_secs(10),
    );
    // A folder that does not exist: refused by name, with what to do.
    d.type_into("#build-folder", "/no/such/folder");
    d.type_into("#build-tag", "gui-built:1");
    d.click("#build-submit");
    let refused = d.wait_for(
        "the missing folder refused",
        "document.querySelector('#build-status').dataset.state === 'error' && document.querySelector('#build-status').textContent",
        Duration::from_secs(10),
    );
    assert!(
        refused
            .as_str()
            .unwrap()
            .contains("/no/such/folder does not exist")
            && refused.as_str().unwrap().contains("Browse"),
        "{refused}"
    );
    d.type_into("#build-tag", "Not A Tag");
    d.type_into("#build-folder", &ctx.display().to_string());
    d.click("#build-submit");
    let refused = d.wait_for(
        "the bad tag refused",
        "document.querySelector('#build-status').dataset.state === 'error' && document.querySelector('#build-status').textContent",
        Duration::from_secs(10),
    );
    assert!(
        refused.as_str().unwrap().contains("has a space in it"),
        "{refused}"
    );
    d.screenshot("22-build-refused");
    d.type_into("#build-tag", "gui-built:1");
    d.type_into("#build-args", "GREETING=from-gui");
    d.click("#build-submit");
    d.wait_for_unless(
        "the build done",
        "document.querySelector('#build-status').dataset.state === 'done'",
        "document.querySelector('#build-status').dataset.state === 'error'",
        Duration::from_secs(300),
    );
    let out = d.js("return document.querySelector('#build-output').textContent");
    let out = out.as_str().unwrap();
    assert!(out.contains("(1 left out by .dockerignore)"), "{out}");
    assert!(out.contains("Successfully tagged gui-built:1"), "{out}");
    d.screenshot("23-build-done");
    let builds = d.js("return document.querySelector('#build-output').textContent.split('Sent the build context').length - 1");
    assert_eq!(builds, json!(1), "one build");
    assert_eq!(
        d.live_streams()["builds"],
        json!(0),
        "the build's stream ended"
    );
    eprintln!("build: {:.1} s", step.elapsed().as_secs_f64());

    // Run it from the build's result: bad input first (a port out of range; a folder the
    // machine does not share, refused by the host agent's proxy), then for real.
    d.click("#build-run");
    d.wait_for(
        "the run dialog",
        "document.querySelector('#run-dialog').open",
        Duration::from_secs(10),
    );
    d.type_into("#run-name", "built-web");
    d.type_into("#run-ports", "99999:80");
    d.click("#run-submit");
    let refused = d.wait_for(
        "the bad port refused",
        "!document.querySelector('#run-error').hidden && document.querySelector('#run-error').textContent",
        Duration::from_secs(10),
    );
    assert!(
        refused
            .as_str()
            .unwrap()
            .contains("99999 is not a port number (1 to 65535)"),
        "{refused}"
    );
    d.type_into("#run-ports", "18081:80");
    d.type_into("#run-volumes", &format!("{}:/src:ro", ctx.display()));
    d.type_into("#run-env", "NAME=gui-test");
    d.click("#run-submit");
    let refused = d.wait_for(
        "the unshared folder refused by the proxy",
        "document.querySelector('#run-error').textContent.includes('not shared') && document.querySelector('#run-error').textContent",
        Duration::from_secs(30),
    );
    assert!(
        refused.as_str().unwrap().contains(&format!(
            "bind mount source {} is not shared with machine \"default\"",
            ctx.display()
        )) && refused
            .as_str()
            .unwrap()
            .contains("rmachine create --mount"),
        "{refused}"
    );
    d.screenshot("24-run-refused");
    assert_eq!(
        d.js("return document.querySelector('#build-status').dataset.state"),
        json!("done"),
        "Run… opened the dialog and started no second build"
    );
    d.type_into("#run-volumes", "gui-built-data:/data");
    d.click("#run-submit");
    // The new container's log view opens and follows it.
    d.wait_for_unless(
        "the container's log",
        "!document.querySelector('#page-logs').hidden && document.querySelector('#logs-body').textContent.includes('hello from gui-test')",
        "!document.querySelector('#run-error').hidden",
        Duration::from_secs(60),
    );
    let get = |path: &str| -> Option<String> {
        ureq::get(&format!("http://127.0.0.1:18081{path}"))
            .timeout(Duration::from_secs(5))
            .call()
            .ok()?
            .into_string()
            .ok()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let page = loop {
        if let Some(p) = get("/index.html") {
            break p;
        }
        assert!(
            Instant::now() < deadline,
            "the published port 18081 never answered"
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    assert_eq!(page.trim(), "built-page");
    assert_eq!(get("/arg.txt").unwrap_or_default().trim(), "arg=from-gui");
    assert_eq!(
        get("/secret.txt"),
        None,
        ".dockerignore kept the secret out"
    );
    assert_eq!(d.live_streams()["logs"], json!(1), "the log view's stream");
    d.screenshot("25-logs");
    // Search: the matching line is marked; the filter leaves only it; timestamps show.
    d.type_into("#logs-search", "SECOND");
    d.wait_for(
        "the search's match",
        "document.querySelector('#logs-body').dataset.matches === '1' && document.querySelector('#logs-body mark')?.textContent === 'second'",
        Duration::from_secs(10),
    );
    d.click("#logs-filter");
    d.wait_for(
        "only the matching line",
        "document.querySelectorAll('#logs-body .log-line').length === 1 && document.querySelector('#logs-body .log-line').textContent.includes('second line')",
        Duration::from_secs(10),
    );
    d.click("#logs-timestamps");
    d.wait_for(
        "the timestamps",
        "document.querySelector('#logs-body').classList.contains('show-ts') && /^\\d{4}-\\d\\d-\\d\\d \\d\\d:\\d\\d/.test(document.querySelector('#logs-body .log-line .ts').textContent) && document.querySelector('#logs-body .log-line .ts').offsetWidth > 0",
        Duration::from_secs(10),
    );
    d.screenshot("26-logs-search-filtered-timestamps");
    // Download: no file chooser in this test (RMACHINE_DESKTOP_NO_FILE_DIALOG), so the
    // Downloads folder, which the toast names.
    d.click("#logs-download");
    let saved = d.wait_for(
        "the downloaded log",
        "document.querySelector('#logs-download').dataset.saved",
        Duration::from_secs(30),
    );
    let saved = PathBuf::from(saved.as_str().unwrap());
    assert_eq!(saved, downloads.join("built-web.log"));
    let log = std::fs::read_to_string(&saved).unwrap();
    let lines: Vec<&str> = log.lines().collect();
    assert!(lines.len() >= 3, "{log}");
    assert!(
        lines
            .iter()
            .any(|l| l.ends_with(" hello from gui-test") && l.starts_with("20")),
        "timestamps as shown: {log}"
    );
    assert!(log.contains("oops"), "stderr too: {log}");
    d.wait_for(
        "the toast naming the Downloads folder",
        "[...document.querySelectorAll('.toast')].some((t) => t.textContent.includes('built-web.log') && t.textContent.includes('Downloads folder'))",
        Duration::from_secs(10),
    );
    d.screenshot("27-logs-downloaded");
    d.click("#logs-back");
    let deadline = Instant::now() + Duration::from_secs(10);
    while d.live_streams()["logs"] != json!(0) {
        assert!(
            Instant::now() < deadline,
            "the log stream outlived its view: {}",
            d.live_streams()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("run and logs: {:.1} s", step.elapsed().as_secs_f64());

    // Save the image, remove it, load it back from the file; it runs.
    let step = Instant::now();
    docker(&socket, &["rm", "-f", "built-web"]);
    d.click("#nav-images");
    d.wait_for(
        "the built image in the list",
        "document.querySelector(\"tr[data-tags~='gui-built:1'] [data-action='save']\")",
        Duration::from_secs(30),
    );
    d.click("tr[data-tags~='gui-built:1'] [data-action='save']");
    let archive = d.wait_for(
        "the saved image",
        "document.body.dataset.lastSaved",
        Duration::from_secs(120),
    );
    let archive = PathBuf::from(archive.as_str().unwrap());
    assert_eq!(archive, downloads.join("gui-built_1.tar"));
    assert!(
        std::fs::metadata(&archive).unwrap().len() > 100_000,
        "a whole image"
    );
    d.screenshot("28-image-saved");
    docker(&socket, &["rmi", "gui-built:1"]);
    d.wait_for(
        "the image gone from the list",
        "document.querySelector('#images-table') && !document.querySelector(\"tr[data-tags~='gui-built:1']\")",
        Duration::from_secs(30),
    );
    d.click("#import-image");
    d.type_into("#import-path", &archive.display().to_string());
    d.click("#import-ok");
    d.wait_for(
        "the image loaded again",
        "document.querySelector(\"tr[data-tags~='gui-built:1']\")",
        Duration::from_secs(120),
    );
    d.screenshot("29-image-loaded");
    let arg = docker(
        &socket,
        &["run", "--rm", "gui-built:1", "cat", "/www/arg.txt"],
    );
    assert_eq!(arg, "arg=from-gui");
    eprintln!("save and load: {:.1} s", step.elapsed().as_secs_f64());

    // Compose: a file brought up from the Containers page shows as a group whose
    // services run (one publishes a port); the group's Down takes it down.
    let step = Instant::now();
    let proj = tmp.path().join("guiproj");
    std::fs::create_dir_all(&proj).unwrap();
    std::fs::write(
        proj.join("compose.yaml"),
        "services:\n  web:\n    image: gui-built:1\n    environment:\n      NAME: composed\n    ports: [\"18082:80\"]\n  \
         worker:\n    image: busybox-gui:1\n    command: [\"sleep\", \"300\"]\n",
    )
    .unwrap();
    d.click("#nav-containers");
    d.click("#compose-open");
    d.wait_for(
        "the compose dialog",
        "document.querySelector('#compose-dialog').open",
        Duration::from_secs(10),
    );
    d.type_into(
        "#compose-file",
        &proj.join("missing.yaml").display().to_string(),
    );
    d.click("#compose-up");
    let refused = d.wait_for(
        "the missing compose file refused",
        "document.querySelector('#compose-status').dataset.state === 'error' && document.querySelector('#compose-status').textContent",
        Duration::from_secs(10),
    );
    assert!(
        refused.as_str().unwrap().contains("does not exist"),
        "{refused}"
    );
    d.type_into(
        "#compose-file",
        &proj.join("compose.yaml").display().to_string(),
    );
    d.type_into("#compose-project", "guiproj");
    d.click("#compose-up");
    d.wait_for_unless(
        "the project up",
        "document.querySelector('#compose-status').dataset.state === 'done'",
        "document.querySelector('#compose-status').dataset.state === 'error'",
        Duration::from_secs(120),
    );
    d.screenshot("30-compose-up");
    d.click("#compose-close");
    for service in ["web", "worker"] {
        d.wait_for(
            "the project's group",
            &format!("document.querySelector('section[aria-label=\"Compose project guiproj\"] tr[data-name=\"guiproj-{service}-1\"]')?.dataset.state === 'running'"),
            Duration::from_secs(30),
        );
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let page = loop {
        let r = ureq::get("http://127.0.0.1:18082/index.html")
            .timeout(Duration::from_secs(5))
            .call()
            .ok()
            .and_then(|r| r.into_string().ok());
        if let Some(p) = r {
            break p;
        }
        assert!(
            Instant::now() < deadline,
            "the compose service's port 18082 never answered"
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    assert_eq!(page.trim(), "built-page");
    d.screenshot("31-compose-group");
    d.click("section[aria-label='Compose project guiproj'] [data-action='compose-down']");
    d.click("#confirm-ok");
    d.wait_for_unless(
        "the project down",
        "document.querySelector('#compose-status').dataset.state === 'done'",
        "document.querySelector('#compose-status').dataset.state === 'error'",
        Duration::from_secs(120),
    );
    d.click("#compose-close");
    d.wait_for(
        "the group gone",
        "document.querySelector('#containers-list') && !document.querySelector('section[aria-label=\"Compose project guiproj\"]')",
        Duration::from_secs(30),
    );
    d.screenshot("32-compose-down");
    assert_eq!(d.live_streams()["compose"], json!(0), "compose runs ended");
    eprintln!("compose up and down: {:.1} s", step.elapsed().as_secs_f64());

    // The other pages.
    d.click("#nav-images");
    d.wait_for(
        "the imported image",
        "document.querySelector('#images-table')?.innerText.includes('busybox-gui:1')",
        Duration::from_secs(30),
    );
    d.screenshot("8-images");
    d.click("#nav-volumes");
    d.wait_for(
        "the volume",
        "document.querySelector('#volumes-table')?.innerText.includes('gui-data')",
        Duration::from_secs(30),
    );
    d.screenshot("9-volumes");
    d.click("#nav-networks");
    d.wait_for(
        "the networks",
        "document.querySelector('#networks-table')?.innerText.includes('bridge')",
        Duration::from_secs(30),
    );
    d.screenshot("10-networks");
    d.click("#nav-settings");
    d.wait_for(
        "the defaults form",
        "document.querySelector('#defaults-file').textContent.includes('defaults.toml')",
        Duration::from_secs(30),
    );
    d.screenshot("11-settings");
    // The Docker Engine pane: a setting a machine's engine may not take is refused by
    // name and nothing is stored; a good one is saved to the machine's settings, and as
    // the machine runs the page offers the restart that applies it.
    d.wait_for(
        "the engine editor",
        "document.querySelector('#engine-machine').value === 'default' && document.querySelector('#engine-json').value.trim() === '{}'",
        Duration::from_secs(30),
    );
    d.js("document.querySelector('#engine-json').value = '{\"hosts\": [\"tcp://0.0.0.0:2375\"]}'; return true;");
    d.click("#engine-save");
    d.wait_for(
        "the refusal naming the setting",
        "document.querySelector('#engine-status').textContent.includes('\"hosts\" cannot be set')",
        Duration::from_secs(30),
    );
    let settings_file = home.join("machines/default/machine.toml");
    let stored = std::fs::read_to_string(&settings_file).unwrap();
    assert!(
        !stored.contains("hosts"),
        "a refused setting was stored: {stored}"
    );
    d.js("document.querySelector('#engine-json').value = '{\"log-driver\": \"local\"}'; return true;");
    d.click("#engine-save");
    d.wait_for(
        "the setting saved, with the restart offered",
        "document.querySelector('#engine-status').textContent.includes('Saved') && !document.querySelector('#engine-restart').hidden",
        Duration::from_secs(30),
    );
    let stored = std::fs::read_to_string(&settings_file).unwrap();
    assert!(
        stored.contains("log-driver") && stored.contains("local"),
        "{stored}"
    );
    d.screenshot("11b-settings-engine");

    // Machine logs, then stop the machine from the UI.
    d.click("#nav-machines");
    d.click("#machine-default [data-action='logs']");
    d.wait_for(
        "the console log",
        "document.querySelector('#text-body').textContent.length > 100",
        Duration::from_secs(30),
    );
    d.screenshot("12-machine-console-log");
    d.click("#text-close");
    d.click("#machine-default [data-action='stop']");
    d.wait_for(
        "the machine stopped",
        "document.querySelector('#machine-default')?.dataset.state === 'stopped'",
        Duration::from_secs(180),
    );
    d.screenshot("13-machines-stopped");

    // A stopped machine's engine pages offer to start it instead of an error.
    d.click("#nav-containers");
    d.wait_for(
        "the start offer",
        "document.querySelector('#engine-start')",
        Duration::from_secs(30),
    );
    d.screenshot("14-containers-machine-stopped");

    // The create form: a second machine made (not started), then deleted.
    d.click("#nav-machines");
    d.click("#new-machine");
    d.type_into("#create-name", "spare");
    d.js("document.querySelector('#create-driver').value = 'qemu'; return true;");
    d.type_into("#create-cpus", "1");
    d.type_into("#create-memory", "1024");
    d.type_into("#create-disk", "4");
    d.screenshot("15-machines-create-form");
    d.click("#create-submit");
    d.wait_for(
        "the new machine row",
        "document.querySelector('#machine-spare')?.dataset.state === 'stopped'",
        Duration::from_secs(30),
    );
    d.click("#machine-spare [data-action='delete']");
    d.click("#confirm-ok");
    d.wait_for(
        "the machine deleted",
        "!document.querySelector('#machine-spare') && document.querySelector('#machine-default')",
        Duration::from_secs(30),
    );

    let _ = ureq::delete(&format!("{}/session/{}", d.base, d.session)).call();
    drop(procs);
    eprintln!("screenshots: {}", shots.display());
}
