use std::io;
use std::path::Path;

use super::Endpoint;

/// A connected local stream.
pub type LocalStream = tokio::net::UnixStream;

pub(super) fn machine_endpoint(dir: &Path, file: &str, _pipe: String) -> Endpoint {
    Endpoint::Unix(dir.join(file))
}

/// Accepts connections on a unix socket only its owner can reach.
pub struct LocalListener {
    inner: tokio::net::UnixListener,
}

impl LocalListener {
    /// Listens at `endpoint` (0600). A socket file left by a dead listener is replaced; a
    /// live one is refused.
    pub fn bind(endpoint: &Endpoint) -> io::Result<LocalListener> {
        let path = endpoint.path();
        if std::os::unix::net::UnixStream::connect(&path).is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("{} is in use by another process", path.display()),
            ));
        }
        let _ = std::fs::remove_file(&path);
        let inner = tokio::net::UnixListener::bind(&path)?;
        crate::sys::fs::set_private(&path)?;
        Ok(LocalListener { inner })
    }

    /// The next connection.
    pub async fn accept(&mut self) -> io::Result<LocalStream> {
        self.inner.accept().await.map(|(s, _)| s)
    }
}

/// Connects to a local endpoint.
pub async fn connect(endpoint: &Endpoint) -> io::Result<LocalStream> {
    tokio::net::UnixStream::connect(endpoint.path()).await
}

/// Connects to a unix socket by path (rmachine-vmm's hybrid vsock socket).
pub async fn connect_path(path: &Path) -> io::Result<LocalStream> {
    tokio::net::UnixStream::connect(path).await
}
