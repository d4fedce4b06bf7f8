//! Local endpoints: where the docker CLI reaches a machine's engine (`docker.sock`) and
//! rmachine its host agent (`hostagent.sock`). On unix a socket file in the machine's
//! folder (0600); on Windows a named pipe, `\\.\pipe\rmachine-NAME` for the engine (the
//! docker CLI's `npipe://` form, as Docker Desktop's own engine pipe).

use std::path::{Path, PathBuf};

use serde::Serialize;

#[cfg(unix)]
#[path = "local_socket_unix.rs"]
mod os;
#[cfg(windows)]
#[path = "local_socket_windows.rs"]
mod os;

pub use os::{connect, connect_path, LocalListener, LocalStream};

/// A local endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(tag = "kind", content = "path", rename_all = "snake_case")]
pub enum Endpoint {
    /// A unix socket file.
    Unix(PathBuf),
    /// A Windows named pipe (its name, without `\\.\pipe\`).
    Pipe(String),
}

impl Endpoint {
    /// The endpoint of a machine's `file` (in `dir`; `pipe` is the pipe name on Windows).
    pub fn for_machine(dir: &Path, file: &str, pipe: String) -> Endpoint {
        os::machine_endpoint(dir, file, pipe)
    }

    /// For `DOCKER_HOST` and docker contexts: `unix:///…` or `npipe:////./pipe/…`.
    pub fn docker_host(&self) -> String {
        match self {
            Endpoint::Unix(path) => format!("unix://{}", path.display()),
            Endpoint::Pipe(name) => format!("npipe:////./pipe/{name}"),
        }
    }

    /// The path to open: the socket file, or `\\.\pipe\NAME`.
    pub fn path(&self) -> PathBuf {
        match self {
            Endpoint::Unix(path) => path.clone(),
            Endpoint::Pipe(name) => PathBuf::from(format!(r"\\.\pipe\{name}")),
        }
    }

    /// Removes what a listener left (a stale socket file; a pipe vanishes by itself).
    pub fn remove_stale(&self) {
        if let Endpoint::Unix(path) = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.path().display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn test_docker_host_forms() {
        assert_eq!(
            Endpoint::Unix("/m/docker.sock".into()).docker_host(),
            "unix:///m/docker.sock"
        );
        let pipe = Endpoint::Pipe("rmachine-dev".into());
        assert_eq!(pipe.docker_host(), "npipe:////./pipe/rmachine-dev");
        assert_eq!(pipe.path(), PathBuf::from(r"\\.\pipe\rmachine-dev"));
    }

    /// A listener serves several clients in turn, each a stream both ways, and a second
    /// listener on a live endpoint is refused (its probe is a connection the first one
    /// sees close at once).
    #[tokio::test]
    async fn test_listener_serves_clients_both_ways() {
        let dir = tempfile::tempdir().unwrap();
        let endpoint = Endpoint::for_machine(
            dir.path(),
            "test.sock",
            format!("rmachine-test-{}", std::process::id()),
        );
        let mut listener = LocalListener::bind(&endpoint).unwrap();
        assert!(
            LocalListener::bind(&endpoint).is_err(),
            "a live endpoint is taken"
        );
        let server = tokio::spawn(async move {
            let mut served = 0;
            while served < 2 {
                let mut s = listener.accept().await.unwrap();
                let mut buf = [0u8; 5];
                if s.read_exact(&mut buf).await.is_err() {
                    continue;
                }
                served += 1;
                s.write_all(&buf).await.unwrap();
                s.write_all(b" back").await.unwrap();
                s.shutdown().await.unwrap();
            }
        });
        for word in ["hello", "again"] {
            let mut c = connect(&endpoint).await.unwrap();
            c.write_all(word.as_bytes()).await.unwrap();
            let mut reply = String::new();
            c.read_to_string(&mut reply).await.unwrap();
            assert_eq!(reply, format!("{word} back"));
        }
        server.await.unwrap();
    }
}
