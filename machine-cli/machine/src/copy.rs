//! The copy engine behind `rmachine cp SRC NAME:DST` and `rmachine cp NAME:SRC DST`:
//! files and folders between the host and a machine, with the rules of `docker cp`.
//!
//! The copy travels as a tar stream over the agent's exec service: to the guest, the
//! host packs the source (the `tar` crate) and the guest's `tar -x` unpacks it; from the
//! guest, the guest's `tar -c` packs and the host unpacks. Where the copy lands is
//! decided first, from what the destination is (a folder, a file, nothing), so the
//! archive carries the final name and nothing is renamed in the guest afterwards.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use rmachine_protocol::exec::{ExecRequest, GuestFrame};
use tokio::sync::mpsc;

use crate::exec::{self, ExecError};
use crate::guest_link::Carrier;
use crate::store::{validate_name, Store};

/// Why a copy failed.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// The copy cannot be done as asked (what is wrong is in the message).
    #[error("{0}")]
    Refused(String),
    #[error("{what}")]
    Step {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error(transparent)]
    Exec(#[from] ExecError),
    #[error("i/o on the copy")]
    Io(#[from] std::io::Error),
    #[error("the {0} thread panicked")]
    Thread(&'static str),
}

/// Ends the function with [`CopyError::Refused`] and a formatted message.
macro_rules! refuse {
    ($($arg:tt)*) => {
        return Err(CopyError::Refused(format!($($arg)*)))
    };
}

/// Names the step a lower error failed, as [`CopyError::Step`].
trait Context<T> {
    fn context(self, what: &str) -> Result<T, CopyError>;
    fn with_context(self, what: impl FnOnce() -> String) -> Result<T, CopyError>;
}

impl<T, E: std::error::Error + Send + Sync + 'static> Context<T> for Result<T, E> {
    fn context(self, what: &str) -> Result<T, CopyError> {
        self.with_context(|| what.to_string())
    }

    fn with_context(self, what: impl FnOnce() -> String) -> Result<T, CopyError> {
        self.map_err(|e| CopyError::Step {
            what: what(),
            source: Box::new(e),
        })
    }
}

/// A finished copy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Copied {
    /// Something the user should hear although the copy completed (files that changed
    /// while they were read).
    pub warning: Option<String>,
}

/// Bytes per stdin frame of the upload.
const CHUNK: usize = 64 * 1024;

/// Chunks queued between the packing or unpacking thread and the connection.
const QUEUE: usize = 8;

/// Where relative guest paths start (the shell's home).
const GUEST_HOME: &str = "/root";

/// One side of a copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Host(String),
    Guest { machine: String, path: String },
}

/// `NAME:PATH` names a machine when NAME is a valid machine name (so `./a:b` and
/// `/x:y` stay host paths).
pub fn parse_location(arg: &str) -> Location {
    match arg.split_once(':') {
        Some((machine, path)) if validate_name(machine).is_ok() => Location::Guest {
            machine: machine.to_string(),
            path: path.to_string(),
        },
        _ => Location::Host(arg.to_string()),
    }
}

/// A path as given, normalized: absolute, without `.`/`..`, plus what its spelling
/// asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PathSpec {
    path: String,
    /// Ends in `/` (or `/.`): must be a folder.
    trailing_slash: bool,
    /// Ends in `/.`: the folder's contents, not the folder.
    contents: bool,
}

impl PathSpec {
    fn new(raw: &str, base: &str) -> PathSpec {
        let contents = raw == "." || raw.ends_with("/.");
        let trailing_slash = contents || raw.ends_with('/');
        let joined = if raw.starts_with('/') {
            raw.to_string()
        } else {
            format!("{base}/{raw}")
        };
        let mut parts: Vec<&str> = Vec::new();
        for part in joined.split('/') {
            match part {
                "" | "." => {}
                ".." => {
                    parts.pop();
                }
                part => parts.push(part),
            }
        }
        PathSpec {
            path: format!("/{}", parts.join("/")),
            trailing_slash,
            contents,
        }
    }

    /// The last component; `None` for `/`.
    fn base(&self) -> Option<&str> {
        self.path.rsplit('/').next().filter(|b| !b.is_empty())
    }

    /// The folder holding it (`/` for `/`).
    fn parent(&self) -> &str {
        match self.path.rfind('/') {
            Some(0) | None => "/",
            Some(i) => &self.path[..i],
        }
    }
}

/// What a path is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Dir,
    /// A file, a symbolic link or anything else that is not a folder.
    File,
    /// Nothing there, but its parent is a folder.
    Missing,
    /// Not even its parent folder exists.
    NoParent,
}

/// Where a copy lands: unpacked in `dir`, named `name` there, or (`None`) the source's
/// contents merged into `dir` itself.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Plan {
    dir: String,
    name: Option<String>,
}

/// Decides where a copy lands, as `docker cp` does. `dst_label` names the destination in
/// messages.
fn plan(
    src: &PathSpec,
    src_is_dir: bool,
    dst: &PathSpec,
    dst_kind: Kind,
    dst_label: &str,
) -> Result<Plan, CopyError> {
    let dst_name = || dst.base().map(str::to_string);
    match dst_kind {
        Kind::Dir => match src.base() {
            Some(name) if !src.contents => Ok(Plan {
                dir: dst.path.clone(),
                name: Some(name.to_string()),
            }),
            _ => Ok(Plan {
                dir: dst.path.clone(),
                name: None,
            }),
        },
        Kind::File if src_is_dir => refuse!("cannot copy a folder onto the file {dst_label}"),
        Kind::File if dst.trailing_slash => refuse!("{dst_label} is not a folder"),
        Kind::Missing if dst.trailing_slash && !src_is_dir => {
            refuse!("folder {dst_label} does not exist")
        }
        Kind::File | Kind::Missing => Ok(Plan {
            dir: dst.parent().to_string(),
            name: dst_name(),
        }),
        Kind::NoParent => refuse!("the folder that would hold {dst_label} does not exist"),
    }
}

/// Copies `src` to `dst`, one of them `NAME:PATH` in a running machine of `store`.
pub fn copy(store: &Store, src: &str, dst: &str) -> Result<Copied, CopyError> {
    let (src, dst) = (parse_location(src), parse_location(dst));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let carrier = |machine: &str| -> Result<Carrier, CopyError> {
        let m = store.load(machine).context("cannot copy")?;
        m.running_carrier()
            .map_err(|e| CopyError::Refused(e.to_string()))
    };
    match (src, dst) {
        (Location::Host(src), Location::Guest { machine, path }) => {
            let carrier = carrier(&machine)?;
            let label = format!("{machine}:{path}");
            rt.block_on(upload(&carrier, &src, &path, &label))?;
            Ok(Copied::default())
        }
        (Location::Guest { machine, path }, Location::Host(dst)) => {
            let carrier = carrier(&machine)?;
            let label = format!("{machine}:{path}");
            rt.block_on(download(&carrier, &path, &label, &dst))
        }
        (Location::Guest { .. }, Location::Guest { .. }) => {
            refuse!("both SRC and DST are in machines: copy through the host in two steps")
        }
        (Location::Host(_), Location::Host(_)) => {
            refuse!("neither SRC nor DST names a machine: write one as NAME:PATH (use cp for host copies)")
        }
    }
}

fn host_cwd() -> Result<String, CopyError> {
    let cwd = std::env::current_dir().context("cannot read the current folder")?;
    cwd.to_str()
        .map(str::to_string)
        .ok_or_else(|| CopyError::Refused("the current folder's path is not UTF-8".into()))
}

/// What a path in the guest is. A symbolic link to a folder counts as a folder when
/// `follow`, as a file otherwise.
async fn guest_kind(carrier: &Carrier, path: &str, follow: bool) -> Result<Kind, CopyError> {
    const PROBE: &str = r#"p=$1
if [ -d "$p" ] && { [ "$2" = follow ] || [ ! -L "$p" ]; }; then echo dir
elif [ -e "$p" ] || [ -L "$p" ]; then echo file
elif [ -d "$(dirname -- "$p")" ]; then echo missing
else echo noparent; fi"#;
    let follow = if follow { "follow" } else { "nofollow" };
    let outcome = exec::run(carrier, &["sh", "-c", PROBE, "sh", path, follow], b"")
        .await
        .context("cannot look at the path in the machine")?;
    match (
        outcome.code,
        String::from_utf8_lossy(&outcome.stdout).trim(),
    ) {
        (0, "dir") => Ok(Kind::Dir),
        (0, "file") => Ok(Kind::File),
        (0, "missing") => Ok(Kind::Missing),
        (0, "noparent") => Ok(Kind::NoParent),
        (code, out) => refuse!(
            "cannot look at {path} in the machine (exit {code}): {out} {}",
            outcome.stderr_text()
        ),
    }
}

/// What a host path is (a symbolic link to a folder is a folder).
fn host_kind(path: &Path) -> Kind {
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => Kind::Dir,
        Ok(_) => Kind::File,
        Err(_) if std::fs::symlink_metadata(path).is_ok() => Kind::File,
        Err(_) => match path.parent().map(std::fs::metadata) {
            Some(Ok(m)) if m.is_dir() => Kind::Missing,
            _ => Kind::NoParent,
        },
    }
}

/// Host → guest.
async fn upload(
    carrier: &Carrier,
    src_raw: &str,
    dst_raw: &str,
    dst_label: &str,
) -> Result<(), CopyError> {
    let src = PathSpec::new(src_raw, &host_cwd()?);
    let src_path = PathBuf::from(&src.path);
    let meta = match src.contents {
        true => std::fs::metadata(&src_path),
        false => std::fs::symlink_metadata(&src_path),
    };
    let src_is_dir = match meta {
        Ok(m) => m.is_dir(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            refuse!("{src_raw}: no such file or folder")
        }
        Err(e) => return Err(e).with_context(|| format!("cannot read {src_raw}")),
    };
    if src.contents && !src_is_dir {
        refuse!("{src_raw} is not a folder");
    }
    let dst = PathSpec::new(dst_raw, GUEST_HOME);
    let dst_kind = guest_kind(carrier, &dst.path, true).await?;
    let plan = plan(&src, src_is_dir, &dst, dst_kind, dst_label)?;

    let (tx, mut chunks) = mpsc::channel::<Vec<u8>>(QUEUE);
    let name = plan.name.clone();
    let packer = std::thread::spawn(move || {
        pack(
            &src_path,
            src_is_dir,
            name.as_deref(),
            ChannelWriter::new(tx),
        )
    });
    let argv = ["tar", "-x", "--no-same-owner", "-C", &plan.dir, "-f", "-"];
    let request = ExecRequest {
        argv: argv.iter().map(|a| a.to_string()).collect(),
        ..ExecRequest::default()
    };
    let (mut input, output) = exec::open(carrier, &request).await?;
    let send = async {
        while let Some(chunk) = chunks.recv().await {
            input.stdin(&chunk).await?;
        }
        input.close_stdin().await
    };
    let outcome = finish_with(send, collect(output)).await?;
    // The packer ends once its channel is closed (here, at the latest).
    drop(chunks);
    let packed = packer.join().map_err(|_| CopyError::Thread("packing"))?;
    match (packed, outcome.code) {
        // The guest's tar may stop reading at the archive's end marker, before the
        // padding after it.
        (Err(e), 0) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        (Err(e), _) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(e).with_context(|| format!("cannot read {src_raw}"))
        }
        (_, 0) => Ok(()),
        (_, code) => refuse!(
            "cannot write {dst_label}: tar in the machine failed (exit {code}): {}",
            outcome.stderr_text()
        ),
    }
}

/// Guest → host.
async fn download(
    carrier: &Carrier,
    src_raw: &str,
    src_label: &str,
    dst_raw: &str,
) -> Result<Copied, CopyError> {
    let src = PathSpec::new(src_raw, GUEST_HOME);
    let src_kind = guest_kind(carrier, &src.path, src.contents).await?;
    let src_is_dir = match src_kind {
        Kind::Dir => true,
        Kind::File => false,
        Kind::Missing | Kind::NoParent => refuse!("{src_label}: no such file or folder"),
    };
    if src.contents && !src_is_dir {
        refuse!("{src_label} is not a folder");
    }
    let dst = PathSpec::new(dst_raw, &host_cwd()?);
    let dst_kind = host_kind(Path::new(&dst.path));
    let plan = plan(&src, src_is_dir, &dst, dst_kind, dst_raw)?;
    // The archive's top entry: the source by its own name, or `.` for its contents.
    let (tar_dir, top) = match (&plan.name, src.base()) {
        (None, _) => (src.path.as_str(), None),
        (Some(_), Some(base)) => (src.parent(), Some(base.to_string())),
        (Some(_), None) => {
            refuse!("the machine's root folder can only be copied into an existing folder")
        }
    };
    let argv = [
        "tar",
        "-c",
        "-C",
        tar_dir,
        "-f",
        "-",
        top.as_deref().unwrap_or("."),
    ];
    let request = ExecRequest {
        argv: argv.iter().map(|a| a.to_string()).collect(),
        ..ExecRequest::default()
    };
    let (mut input, mut output) = exec::open(carrier, &request).await?;
    input.close_stdin().await?;

    let (tx, rx) = mpsc::channel::<Vec<u8>>(QUEUE);
    let dir = PathBuf::from(&plan.dir);
    let name = plan.name.clone();
    let unpacker = std::thread::spawn(move || {
        unpack(
            ChannelReader::new(rx),
            &dir,
            top.as_deref(),
            name.as_deref(),
        )
    });
    let mut stderr = Vec::new();
    let mut refused = None;
    let code = loop {
        match output.next().await? {
            Some(GuestFrame::Stdout(data)) => {
                // A closed channel: the unpacker stopped; its error says why.
                if tx.send(data).await.is_err() {
                    break None;
                }
            }
            Some(GuestFrame::Stderr(data)) => stderr.extend(data),
            Some(GuestFrame::Error(message)) => refused = Some(message),
            Some(GuestFrame::Exit(code)) => break Some(code),
            None => return Err(refused.map_or(ExecError::NoExit, ExecError::Refused).into()),
        }
    };
    drop(tx);
    let unpacked = unpacker
        .join()
        .map_err(|_| CopyError::Thread("unpacking"))?;
    unpacked.with_context(|| format!("cannot write {dst_raw}"))?;
    let stderr = String::from_utf8_lossy(&stderr).trim().to_string();
    match code {
        Some(0) | None => Ok(Copied::default()),
        // GNU tar: 1 means some files changed while being read; the copy is complete.
        Some(1) => Ok(Copied {
            warning: Some(stderr),
        }),
        Some(code) => {
            refuse!("cannot read {src_label}: tar in the machine failed (exit {code}): {stderr}")
        }
    }
}

/// Runs `send` and `receive` together until `receive` is done; `send` is abandoned if
/// the command exits first (it stopped reading).
async fn finish_with<T>(
    send: impl std::future::Future<Output = std::io::Result<()>>,
    receive: impl std::future::Future<Output = Result<T, CopyError>>,
) -> Result<T, CopyError> {
    tokio::pin!(send, receive);
    let mut sent = false;
    loop {
        tokio::select! {
            result = &mut send, if !sent => {
                result.context("cannot send the copy to the machine")?;
                sent = true;
            }
            outcome = &mut receive => return outcome,
        }
    }
}

/// Output of a command run for the copy.
struct Collected {
    code: i32,
    stderr: Vec<u8>,
}

impl Collected {
    fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).trim().to_string()
    }
}

async fn collect(mut output: exec::ExecOutput) -> Result<Collected, CopyError> {
    let mut stderr = Vec::new();
    let mut refused = None;
    loop {
        match output.next().await? {
            Some(GuestFrame::Stdout(data) | GuestFrame::Stderr(data)) => stderr.extend(data),
            Some(GuestFrame::Error(message)) => refused = Some(message),
            Some(GuestFrame::Exit(code)) => return Ok(Collected { code, stderr }),
            None => return Err(refused.map_or(ExecError::NoExit, ExecError::Refused).into()),
        }
    }
}

/// Packs `src` as `name` (a folder's contents at the top when `None`), symbolic links as
/// links.
fn pack<W: Write>(src: &Path, src_is_dir: bool, name: Option<&str>, out: W) -> std::io::Result<()> {
    let mut builder = tar::Builder::new(out);
    builder.follow_symlinks(false);
    match (src_is_dir, name) {
        (true, name) => builder.append_dir_all(name.unwrap_or(""), src)?,
        (false, Some(name)) => builder.append_path_with_name(src, name)?,
        (false, None) => return Err(std::io::Error::other("a file needs a name in the archive")),
    }
    builder.into_inner()?.flush()
}

/// Unpacks an archive into `dir`. `top` is the archive's top entry (`None`: `.`, the
/// contents of a folder); it becomes `name` in `dir` (`None`: merged into `dir`).
fn unpack<R: Read>(
    input: R,
    dir: &Path,
    top: Option<&str>,
    name: Option<&str>,
) -> std::io::Result<()> {
    match (top, name) {
        (_, None) => unpack_entries(input, dir),
        (Some(top), Some(name)) if top == name => unpack_entries(input, dir),
        (top, Some(name)) => {
            // Unpacked aside in the same folder, then renamed into place in one step.
            let aside = tempfile::Builder::new()
                .prefix(".rmachine-cp-")
                .tempdir_in(dir)?;
            unpack_entries(input, aside.path())?;
            let from = top.map_or_else(|| aside.path().to_path_buf(), |top| aside.path().join(top));
            std::fs::rename(from, dir.join(name))
        }
    }
}

fn unpack_entries<R: Read>(input: R, dir: &Path) -> std::io::Result<()> {
    let mut archive = tar::Archive::new(input);
    archive.set_preserve_permissions(true);
    archive.set_preserve_mtime(true);
    archive.set_overwrite(true);
    for entry in archive.entries()? {
        let mut entry = entry?;
        // The root of a contents archive (`./`): the destination folder keeps its own
        // mode.
        if entry
            .path()?
            .components()
            .all(|c| c == std::path::Component::CurDir)
        {
            continue;
        }
        // unpack_in refuses paths that would leave `dir`.
        entry.unpack_in(dir)?;
    }
    Ok(())
}

/// A `Write` that sends chunks to an async receiver (from a plain thread).
struct ChannelWriter {
    tx: mpsc::Sender<Vec<u8>>,
    buf: Vec<u8>,
}

impl ChannelWriter {
    fn new(tx: mpsc::Sender<Vec<u8>>) -> ChannelWriter {
        ChannelWriter {
            tx,
            buf: Vec::with_capacity(CHUNK),
        }
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let n = data.len().min(CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == CHUNK {
            self.flush()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        self.tx.blocking_send(chunk).map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                "the machine stopped reading",
            )
        })
    }
}

/// A `Read` over chunks from an async sender (on a plain thread); the end of the
/// channel is the end of the stream.
struct ChannelReader {
    rx: mpsc::Receiver<Vec<u8>>,
    chunk: Vec<u8>,
    pos: usize,
}

impl ChannelReader {
    fn new(rx: mpsc::Receiver<Vec<u8>>) -> ChannelReader {
        ChannelReader {
            rx,
            chunk: Vec::new(),
            pos: 0,
        }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.chunk.len() {
            match self.rx.blocking_recv() {
                Some(chunk) => (self.chunk, self.pos) = (chunk, 0),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len() - self.pos);
        buf[..n].copy_from_slice(&self.chunk[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_locations_name_machines_only_with_valid_names() {
        assert_eq!(
            parse_location("dev:/tmp/x"),
            Location::Guest {
                machine: "dev".into(),
                path: "/tmp/x".into()
            }
        );
        assert_eq!(
            parse_location("dev:rel"),
            Location::Guest {
                machine: "dev".into(),
                path: "rel".into()
            }
        );
        for host in ["./a:b", "/abs:x", "plain", "Bad/Name:x", ":x"] {
            assert_eq!(parse_location(host), Location::Host(host.into()), "{host}");
        }
    }

    #[test]
    fn test_path_specs_are_normalized() {
        let p = PathSpec::new("a/../b/./c/", "/root");
        assert_eq!(
            p,
            PathSpec {
                path: "/root/b/c".into(),
                trailing_slash: true,
                contents: false
            }
        );
        assert_eq!((p.base(), p.parent()), (Some("c"), "/root/b"));
        let p = PathSpec::new("/srv/site/.", "/x");
        assert_eq!(
            p,
            PathSpec {
                path: "/srv/site".into(),
                trailing_slash: true,
                contents: true
            }
        );
        let root = PathSpec::new("/", "/x");
        assert_eq!((root.base(), root.parent()), (None, "/"));
        assert_eq!(PathSpec::new("/tmp", "/").parent(), "/");
        assert!(PathSpec::new(".", "/root").contents);
    }

    fn spec(raw: &str) -> PathSpec {
        PathSpec::new(raw, "/")
    }

    fn landed(dir: &str, name: Option<&str>) -> Plan {
        Plan {
            dir: dir.into(),
            name: name.map(str::to_string),
        }
    }

    #[test]
    fn test_plans_follow_docker_cp() {
        let file = spec("/h/f.txt");
        let folder = spec("/h/site");
        // Into an existing folder: under the source's name; `/.` merges the contents.
        assert_eq!(
            plan(&file, false, &spec("/tmp"), Kind::Dir, "m:/tmp").unwrap(),
            landed("/tmp", Some("f.txt"))
        );
        assert_eq!(
            plan(&folder, true, &spec("/tmp/"), Kind::Dir, "m").unwrap(),
            landed("/tmp", Some("site"))
        );
        assert_eq!(
            plan(&spec("/h/site/."), true, &spec("/tmp"), Kind::Dir, "m").unwrap(),
            landed("/tmp", None)
        );
        // A new path: the copy takes its name.
        assert_eq!(
            plan(&folder, true, &spec("/tmp/x"), Kind::Missing, "m").unwrap(),
            landed("/tmp", Some("x"))
        );
        assert_eq!(
            plan(&file, false, &spec("/tmp/g"), Kind::Missing, "m").unwrap(),
            landed("/tmp", Some("g"))
        );
        // Over a file: a file replaces it, a folder cannot.
        assert_eq!(
            plan(&file, false, &spec("/tmp/g"), Kind::File, "m").unwrap(),
            landed("/tmp", Some("g"))
        );
        let err = plan(&folder, true, &spec("/tmp/g"), Kind::File, "m:/tmp/g").unwrap_err();
        assert!(
            err.to_string()
                .contains("cannot copy a folder onto the file m:/tmp/g"),
            "{err}"
        );
        // A trailing slash insists on a folder.
        let err = plan(
            &file,
            false,
            &spec("/tmp/new/"),
            Kind::Missing,
            "m:/tmp/new/",
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("folder m:/tmp/new/ does not exist"),
            "{err}"
        );
        let err = plan(&file, false, &spec("/tmp/g/"), Kind::File, "m:/tmp/g/").unwrap_err();
        assert!(err.to_string().contains("is not a folder"), "{err}");
        assert_eq!(
            plan(&folder, true, &spec("/tmp/new/"), Kind::Missing, "m").unwrap(),
            landed("/tmp", Some("new"))
        );
        let err = plan(
            &file,
            false,
            &spec("/no/such/g"),
            Kind::NoParent,
            "m:/no/such/g",
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("folder that would hold m:/no/such/g does not exist"),
            "{err}"
        );
    }

    #[cfg(unix)]
    fn symlink(target: &str, link: &Path) {
        std::os::unix::fs::symlink(target, link).unwrap();
    }

    #[cfg(windows)]
    fn symlink(target: &str, link: &Path) {
        std::os::windows::fs::symlink_file(target, link).unwrap();
    }

    fn tree(root: &Path) {
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(root.join("a.txt"), "alpha\n").unwrap();
        std::fs::write(root.join("sub/b.bin"), [0u8, 1, 2, 255]).unwrap();
        symlink("a.txt", &root.join("link"));
    }

    fn assert_tree(root: &Path) {
        assert_eq!(
            std::fs::read_to_string(root.join("a.txt")).unwrap(),
            "alpha\n"
        );
        assert_eq!(
            std::fs::read(root.join("sub/b.bin")).unwrap(),
            [0u8, 1, 2, 255]
        );
        assert_eq!(
            std::fs::read_link(root.join("link")).unwrap(),
            Path::new("a.txt")
        );
    }

    fn packed(src: &Path, is_dir: bool, name: Option<&str>) -> Vec<u8> {
        let mut out = Vec::new();
        pack(src, is_dir, name, &mut out).unwrap();
        out
    }

    #[cfg_attr(
        windows,
        ignore = "symbolic links need a privilege on Windows, and wine's are not links"
    )]
    #[test]
    fn test_pack_and_unpack_round_trip_with_renames() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("site");
        tree(&src);
        let dst = dir.path().join("dst");
        std::fs::create_dir(&dst).unwrap();

        // Same name: straight into the folder.
        unpack(
            &packed(&src, true, Some("site"))[..],
            &dst,
            Some("site"),
            Some("site"),
        )
        .unwrap();
        assert_tree(&dst.join("site"));
        // Another name: unpacked aside, then renamed; nothing left aside.
        unpack(
            &packed(&src, true, Some("site"))[..],
            &dst,
            Some("site"),
            Some("copy"),
        )
        .unwrap();
        assert_tree(&dst.join("copy"));
        // Contents into an existing folder, and contents as a new folder.
        let merged = dst.join("merged");
        std::fs::create_dir(&merged).unwrap();
        std::fs::write(merged.join("kept.txt"), "kept").unwrap();
        unpack(&packed(&src, true, None)[..], &merged, None, None).unwrap();
        assert_tree(&merged);
        assert!(merged.join("kept.txt").exists());
        unpack(&packed(&src, true, None)[..], &dst, None, Some("fresh")).unwrap();
        assert_tree(&dst.join("fresh"));
        // A file replaces a file.
        std::fs::write(dst.join("target.txt"), "old").unwrap();
        unpack(
            &packed(&src.join("a.txt"), false, Some("a.txt"))[..],
            &dst,
            Some("a.txt"),
            Some("target.txt"),
        )
        .unwrap();
        assert_eq!(
            std::fs::read_to_string(dst.join("target.txt")).unwrap(),
            "alpha\n"
        );
        let names: Vec<_> = std::fs::read_dir(&dst)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(
            !names
                .iter()
                .any(|n| n.to_string_lossy().starts_with(".rmachine-cp-")),
            "{names:?}"
        );
    }

    #[test]
    fn test_unpack_refuses_paths_out_of_the_destination() {
        let dir = tempfile::tempdir().unwrap();
        let mut archive = Vec::new();
        {
            let mut b = tar::Builder::new(&mut archive);
            let mut header = tar::Header::new_gnu();
            header.set_size(1);
            header.set_mode(0o644);
            header.set_entry_type(tar::EntryType::Regular);
            // set_path refuses `..`; write the name bytes directly, as a hostile tar would.
            header.as_old_mut().name[..9].copy_from_slice(b"../escape");
            header.set_cksum();
            b.append(&header, &b"x"[..]).unwrap();
            b.finish().unwrap();
        }
        let inner = dir.path().join("inner");
        std::fs::create_dir(&inner).unwrap();
        let _ = unpack(&archive[..], &inner, None, None);
        assert!(!dir.path().join("escape").exists());
    }

    #[test]
    fn test_channel_reader_and_writer_carry_a_stream() {
        let (tx, rx) = mpsc::channel(2);
        let writer = std::thread::spawn(move || {
            let mut w = ChannelWriter::new(tx);
            for i in 0..1000u32 {
                w.write_all(&i.to_be_bytes().repeat(50)).unwrap();
            }
            w.flush().unwrap();
        });
        let mut read = Vec::new();
        ChannelReader::new(rx).read_to_end(&mut read).unwrap();
        writer.join().unwrap();
        let want: Vec<u8> = (0..1000u32)
            .flat_map(|i| i.to_be_bytes().repeat(50))
            .collect();
        assert_eq!(read, want);
    }
}
