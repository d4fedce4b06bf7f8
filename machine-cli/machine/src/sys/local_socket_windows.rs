use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::windows::named_pipe::{
    ClientOptions, NamedPipeClient, NamedPipeServer, ServerOptions,
};

use super::Endpoint;

/// `ERROR_PIPE_BUSY`: every instance of the pipe is taken; wait and try again.
const ERROR_PIPE_BUSY: i32 = 231;

pub(super) fn machine_endpoint(_dir: &Path, _file: &str, pipe: String) -> Endpoint {
    Endpoint::Pipe(pipe)
}

/// A connected named pipe, from either side.
pub enum LocalStream {
    Server(NamedPipeServer),
    Client(NamedPipeClient),
}

/// Accepts connections on a named pipe: one pipe instance waits for a client at a time,
/// and a new one is made as each is taken.
pub struct LocalListener {
    path: PathBuf,
    next: NamedPipeServer,
}

impl LocalListener {
    /// Listens at `endpoint`; a pipe another process serves is refused (found by
    /// connecting to it, as the unix listener does).
    pub fn bind(endpoint: &Endpoint) -> io::Result<LocalListener> {
        let path = endpoint.path();
        match ClientOptions::new().open(&path) {
            Err(e) if e.raw_os_error() != Some(ERROR_PIPE_BUSY) => {}
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("{} is in use by another process", path.display()),
                ))
            }
        }
        let next = ServerOptions::new()
            .first_pipe_instance(true)
            .create(&path)
            .map_err(|e| {
                io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("{} is in use by another process ({e})", path.display()),
                )
            })?;
        Ok(LocalListener { path, next })
    }

    /// The next connection.
    pub async fn accept(&mut self) -> io::Result<LocalStream> {
        self.next.connect().await?;
        let fresh = ServerOptions::new().create(&self.path)?;
        Ok(LocalStream::Server(std::mem::replace(
            &mut self.next,
            fresh,
        )))
    }
}

/// Connects to a named pipe, waiting while all its instances are busy.
pub async fn connect(endpoint: &Endpoint) -> io::Result<LocalStream> {
    let path = endpoint.path();
    let mut tries = 0;
    loop {
        match ClientOptions::new().open(&path) {
            Ok(c) => return Ok(LocalStream::Client(c)),
            Err(e) if e.raw_os_error() == Some(ERROR_PIPE_BUSY) && tries < 100 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Unix sockets by path (rmachine-vmm's hybrid vsock) do not exist here.
pub async fn connect_path(path: &Path) -> io::Result<LocalStream> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        format!(
            "{}: unix sockets are not available on Windows (the vmm driver runs on Linux)",
            path.display()
        ),
    ))
}

impl AsyncRead for LocalStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            LocalStream::Server(s) => Pin::new(s).poll_read(cx, buf),
            LocalStream::Client(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for LocalStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            LocalStream::Server(s) => Pin::new(s).poll_write(cx, buf),
            LocalStream::Client(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            LocalStream::Server(s) => Pin::new(s).poll_flush(cx),
            LocalStream::Client(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            LocalStream::Server(s) => Pin::new(s).poll_shutdown(cx),
            LocalStream::Client(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
