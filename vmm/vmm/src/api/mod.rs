//! The control API: HTTP/1.1 + JSON on a unix socket.
//!
//! | route | answer |
//! | --- | --- |
//! | `GET /vm` | 200, the VM's state, devices and configuration |
//! | `PUT /vm/pause` | 204 once every vCPU is stopped |
//! | `PUT /vm/resume` | 204 |
//! | `PUT /vm/shutdown` | 202: Ctrl-Alt-Del sent; a guest booted with `reboot=k` resets and the VMM exits 0 |
//! | `PUT /vm/poweroff` | 202: the VMM exits (status 0) once the answer is sent and the client closed the connection, or 1 s later |
//! | `PUT /vm/snapshot` | 200 once a snapshot is written (body `{"dir": PATH}`, or none for the configuration's `snapshot_dir`); the VM is paused first and stays paused: power it off, or resume it if that snapshot will not be restored (the disks would move on from it). Answers the sizes and times |
//! | `GET /metrics` | 200, per-device counters |
//!
//! Errors are `{"error": "..."}` with 400, 404, 405 or 500.

mod server;

pub use server::serve;

/// What the API can do to the VM.
pub trait VmController: Send + Sync {
    /// State, devices and configuration.
    fn describe(&self) -> serde_json::Value;
    /// Stops every vCPU.
    fn pause(&self) -> Result<(), String>;
    /// Restarts the vCPUs.
    fn resume(&self) -> Result<(), String>;
    /// Asks the guest to shut down (Ctrl-Alt-Del).
    fn shutdown(&self) -> Result<(), String>;
    /// Stops the VMM at once.
    fn poweroff(&self);
    /// Per-device counters.
    fn metrics(&self) -> serde_json::Value;
    /// Pauses the VM and writes a snapshot into `dir` (default: the configured folder).
    fn snapshot(&self, dir: Option<std::path::PathBuf>) -> Result<serde_json::Value, String>;
}

/// The body of `PUT /vm/snapshot`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SnapshotRequest {
    /// The snapshot folder.
    dir: Option<std::path::PathBuf>,
}

/// An HTTP answer: status and optional JSON body.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    /// HTTP status code.
    pub status: u16,
    /// JSON body.
    pub body: Option<serde_json::Value>,
    /// Power off once this answer has reached the client.
    pub poweroff_after: bool,
}

fn error(status: u16, message: impl Into<String>) -> Reply {
    reply(status, Some(serde_json::json!({ "error": message.into() })))
}

fn reply(status: u16, body: Option<serde_json::Value>) -> Reply {
    Reply {
        status,
        body,
        poweroff_after: false,
    }
}

/// Routes one request. A power-off is not done here but flagged in the reply: the server does
/// it after the answer went out.
pub fn route(method: &str, path: &str, body: &[u8], vm: &dyn VmController) -> Reply {
    let known = [
        "/vm",
        "/vm/snapshot",
        "/vm/pause",
        "/vm/resume",
        "/vm/shutdown",
        "/vm/poweroff",
        "/metrics",
    ];
    match (method, path) {
        ("GET", "/vm") => reply(200, Some(vm.describe())),
        ("GET", "/metrics") => reply(200, Some(vm.metrics())),
        ("PUT", "/vm/pause") => match vm.pause() {
            Ok(()) => reply(204, None),
            Err(e) => error(500, e),
        },
        ("PUT", "/vm/resume") => match vm.resume() {
            Ok(()) => reply(204, None),
            Err(e) => error(500, e),
        },
        ("PUT", "/vm/shutdown") => match vm.shutdown() {
            Ok(()) => reply(202, None),
            Err(e) => error(500, e),
        },
        ("PUT", "/vm/snapshot") => {
            let request = if body.iter().all(u8::is_ascii_whitespace) {
                Ok(SnapshotRequest { dir: None })
            } else {
                serde_json::from_slice::<SnapshotRequest>(body)
            };
            match request {
                Err(e) => error(400, format!("invalid snapshot request: {e}")),
                Ok(r) => match vm.snapshot(r.dir) {
                    Ok(info) => reply(200, Some(info)),
                    Err(e) => error(500, e),
                },
            }
        }
        ("PUT", "/vm/poweroff") => Reply {
            status: 202,
            body: None,
            poweroff_after: true,
        },
        (_, p) if known.contains(&p) => error(405, format!("method {method} not allowed on {p}")),
        (_, p) => error(404, format!("no route {p}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[derive(Default)]
    struct Fake {
        paused: AtomicBool,
        off: AtomicBool,
    }

    impl VmController for Fake {
        fn describe(&self) -> serde_json::Value {
            serde_json::json!({ "state": if self.paused.load(Ordering::SeqCst) { "paused" } else { "running" } })
        }
        fn pause(&self) -> Result<(), String> {
            self.paused.store(true, Ordering::SeqCst);
            Ok(())
        }
        fn resume(&self) -> Result<(), String> {
            self.paused.store(false, Ordering::SeqCst);
            Ok(())
        }
        fn shutdown(&self) -> Result<(), String> {
            Err("no i8042".into())
        }
        fn poweroff(&self) {
            self.off.store(true, Ordering::SeqCst);
        }
        fn metrics(&self) -> serde_json::Value {
            serde_json::json!({ "devices": {} })
        }
        fn snapshot(&self, dir: Option<std::path::PathBuf>) -> Result<serde_json::Value, String> {
            match dir {
                Some(d) => Ok(serde_json::json!({ "dir": d })),
                None => Err("no snapshot folder".into()),
            }
        }
    }

    #[test]
    fn test_routes() {
        let vm = Fake::default();
        assert_eq!(route("PUT", "/vm/pause", b"", &vm).status, 204);
        assert_eq!(
            route("GET", "/vm", b"", &vm).body.unwrap()["state"],
            "paused"
        );
        assert_eq!(route("PUT", "/vm/resume", b"", &vm).status, 204);
        assert_eq!(
            route("GET", "/vm", b"", &vm).body.unwrap()["state"],
            "running"
        );
        assert_eq!(route("PUT", "/vm/shutdown", b"", &vm).status, 500);
        assert_eq!(route("GET", "/metrics", b"", &vm).status, 200);
        assert_eq!(route("POST", "/vm", b"", &vm).status, 405);
        assert_eq!(route("GET", "/nope", b"", &vm).status, 404);
        let snap = route("PUT", "/vm/snapshot", br#"{"dir": "/s"}"#, &vm);
        assert_eq!(snap.status, 200);
        assert_eq!(snap.body.unwrap()["dir"], "/s");
        assert_eq!(route("PUT", "/vm/snapshot", b"", &vm).status, 500);
        let bad = route("PUT", "/vm/snapshot", br#"{"folder": "/s"}"#, &vm);
        assert_eq!(bad.status, 400);
        assert!(bad.body.unwrap()["error"]
            .as_str()
            .unwrap()
            .contains("unknown field"));
        let off = route("PUT", "/vm/poweroff", b"", &vm);
        assert_eq!(off.status, 202);
        assert!(off.poweroff_after);
        assert!(!vm.off.load(Ordering::SeqCst));
    }

    #[test]
    fn test_server_over_unix_socket() {
        use std::io::{Read, Write};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        let vm: std::sync::Arc<dyn VmController> = std::sync::Arc::new(Fake::default());
        let listener = crate::preopen::bind_api(&path).unwrap();
        serve(listener, vm, &crate::seccomp::Filters::off()).unwrap();
        let mut s = std::os::unix::net::UnixStream::connect(&path).unwrap();
        s.write_all(b"GET /vm HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut response = String::new();
        s.read_to_string(&mut response).unwrap();
        assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
        assert!(response.contains("\"state\":\"running\""), "{response}");
    }
}
