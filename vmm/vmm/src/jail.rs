//! The jail: the VMM confined the way Firecracker's jailer confines Firecracker.
//!
//! With `jail: {uid, gid}` in the configuration, before the VM is built:
//!
//! 1. What the VMM creates or opens by itself is opened first ([`crate::preopen`]: the API and
//!    vsock sockets, at their host paths and owned by whoever starts the VMM; the serial log;
//!    the TAP device).
//! 2. The VMM enters new mount, network and IPC namespaces (and, started as a user without
//!    `CAP_SYS_ADMIN`, a user namespace mapping only that user, which is what gives it the
//!    right to do the rest). Its new root is an empty tmpfs holding, at their host paths, bind
//!    mounts of exactly: the kernel and initrd (read-only), each disk (read-only when the disk
//!    is), passt's socket, each virtio-fs backend's socket, the folder of the vsock socket
//!    (read-only: guest connections go to `<uds_path>_<port>` sockets the host side may create
//!    at any time) and `/dev/kvm` (a device node of its own owned by the jail user when started
//!    as root, as Firecracker's jailer makes one; a bind of the host's node in a user
//!    namespace). The root is then made read-only; the host's root is unmounted. No `/proc`.
//! 3. It enters a new PID namespace and forks: the child, PID 1 there, drops to `uid`/`gid`
//!    (no capabilities, no supplementary groups, `no_new_privs`) and runs the VMM; the parent
//!    drops privileges too and waits, under the `jail` seccomp filter, then exits as its child
//!    did (same status, or the same fatal signal: SIGSYS for a seccomp kill). A signal that
//!    ends the parent ends the child (parent-death signal SIGKILL).
//!
//! Inside, the jail user opens everything by its own rights: the data disk must be writable
//! by it, the sockets it connects to writable by it, the vsock socket's folder searchable.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::{JailConfig, NetBackendKind, ResolvedConfig};
use crate::seccomp::{Filters, ThreadKind};

/// Where the new root is mounted before `pivot_root` (the first that exists). The paths the
/// jail shows are opened before, so hiding them here does not matter.
const ROOT_MOUNT_POINTS: [&str; 3] = ["/tmp", "/mnt", "/run"];
/// `/dev/kvm`.
const KVM: &str = "/dev/kvm";
/// `/dev/urandom`, which the rng device reads.
const URANDOM: &str = "/dev/urandom";
/// linux/capability.h.
const CAP_SYS_ADMIN: u32 = 21;

/// Errors of entering the jail; each says what is missing or names the field.
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    /// A field is impossible for this way of starting.
    #[error("{field}: {reason}")]
    Invalid {
        /// The field.
        field: String,
        /// Why.
        reason: String,
    },
    /// A path to show in the jail cannot be opened.
    #[error("{field}: cannot open {} to show it in the jail", path.display())]
    Source {
        /// The field.
        field: String,
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// New namespaces could not be created.
    #[error("jail: cannot create new {what} namespaces: {why}")]
    Namespaces {
        /// Which.
        what: &'static str,
        /// What is missing.
        why: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A step of building the jail failed.
    #[error("jail: cannot {step}")]
    Step {
        /// The step, with its path.
        step: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The jail user cannot use a path.
    #[error("jail: {field}: uid {uid} cannot open {} ({mode})", path.display())]
    Access {
        /// The field.
        field: String,
        /// The jail user.
        uid: u32,
        /// The path.
        path: PathBuf,
        /// What was tried.
        mode: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

fn step(step: impl Into<String>) -> impl FnOnce(std::io::Error) -> JailError {
    let step = step.into();
    move |source| JailError::Step { step, source }
}

fn errno<T: PartialEq + From<i8>>(rc: T) -> std::io::Result<()> {
    if rc == T::from(-1) {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// How the jail gets its rights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// `CAP_SYS_ADMIN` (started as root): any unprivileged user.
    Privileged,
    /// A user namespace of the starting user: that user only.
    UserNamespace,
}

/// One path shown in the jail.
struct Bind {
    field: String,
    path: PathBuf,
    dir: bool,
    read_only: bool,
    /// An `O_PATH` descriptor of the host's object, opened before anything is hidden.
    source: OwnedFd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    Read,
    ReadWrite,
}

/// Enters the jail of `config` (which must have one). Returns in the child, as the jail user,
/// where the VMM then starts; the parent never returns: it exits as the child does.
pub fn enter(config: &ResolvedConfig, filters: &Arc<Filters>) -> Result<(), JailError> {
    let jail = config
        .config
        .jail
        .as_ref()
        .expect("enter is called for a configuration with a jail");
    let mode = mode(jail)?;
    // Device nodes: (field, path, rdev, read-only).
    let mut nodes = vec![("jail (/dev/kvm)", KVM, false)];
    if config.config.rng.is_some() {
        nodes.push(("rng (/dev/urandom)", URANDOM, true));
    }
    let nodes = nodes
        .into_iter()
        .map(|(field, path, read_only)| {
            let meta = std::fs::metadata(path).map_err(|e| JailError::Source {
                field: field.into(),
                path: path.into(),
                source: e,
            })?;
            Ok((field, path, meta.rdev(), read_only))
        })
        .collect::<Result<Vec<_>, JailError>>()?;
    // Read before /proc is hidden.
    let last_cap = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .unwrap_or(40);
    enter_namespaces(mode, jail)?;
    // Opened in the new mount namespace (a copy of the host's): a bind's source must be
    // in the namespace of the mount.
    let mut binds = binds(config)?;
    if mode == Mode::UserNamespace {
        for (field, path, _, read_only) in &nodes {
            binds.push(bind_source(field, Path::new(path), *read_only)?);
        }
    }
    build_root(mode, jail, &binds, &nodes)?;
    drop(binds);
    tracing::info!(uid = jail.uid, gid = jail.gid, mode = ?mode, "jail: root built");
    fork_into_pid_namespace(mode, jail, last_cap, filters)?;
    check_access(config, jail)
}

fn mode(jail: &JailConfig) -> Result<Mode, JailError> {
    if has_cap_sys_admin() {
        return Ok(Mode::Privileged);
    }
    // SAFETY: getuid and getgid have no preconditions.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    if jail.uid != uid {
        return Err(JailError::Invalid {
            field: "jail.uid".into(),
            reason: format!(
                "{} is not the user starting the vmm ({uid}): without CAP_SYS_ADMIN (not started \
                 as root) the jail is a user namespace, which maps that user only",
                jail.uid
            ),
        });
    }
    if jail.gid != gid {
        return Err(JailError::Invalid {
            field: "jail.gid".into(),
            reason: format!(
                "{} is not the group of the user starting the vmm ({gid}): without \
                 CAP_SYS_ADMIN the jail maps that group only",
                jail.gid
            ),
        });
    }
    Ok(Mode::UserNamespace)
}

/// Whether CAP_SYS_ADMIN is in the effective set (/proc/self/status, CapEff bit 21).
fn has_cap_sys_admin() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << CAP_SYS_ADMIN) != 0)
}

fn bind_source(field: &str, path: &Path, read_only: bool) -> Result<Bind, JailError> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| JailError::Source {
            field: field.into(),
            path: path.into(),
            source: e,
        })?;
    let dir = file
        .metadata()
        .map_err(|e| JailError::Source {
            field: field.into(),
            path: path.into(),
            source: e,
        })?
        .is_dir();
    Ok(Bind {
        field: field.into(),
        path: path.into(),
        dir,
        read_only,
        source: file.into(),
    })
}

/// What the jail shows, from the configuration.
fn binds(config: &ResolvedConfig) -> Result<Vec<Bind>, JailError> {
    let c = &config.config;
    let mut binds = vec![bind_source("kernel.path", &c.kernel.path, true)?];
    if let Some(p) = &c.kernel.initrd {
        binds.push(bind_source("kernel.initrd", p, true)?);
    }
    for (i, d) in c.disks.iter().enumerate() {
        binds.push(bind_source(
            &format!("disks[{i}].path"),
            &d.path,
            d.read_only,
        )?);
    }
    if let Some(net) = &c.net {
        if net.backend == NetBackendKind::Passt {
            if let Some(p) = &net.socket {
                binds.push(bind_source("net.socket", p, true)?);
            }
        }
    }
    for (i, net) in c.extra_nets.iter().enumerate() {
        if let Some(p) = &net.socket {
            binds.push(bind_source(&format!("extra_nets[{i}].socket"), p, true)?);
        }
    }
    for (i, f) in c.filesystems.iter().enumerate() {
        let field = format!("filesystems[{i}].socket_path");
        binds.push(bind_source(&field, &f.socket_path, true)?);
    }
    if let Some(v) = &c.vsock {
        let dir = v.uds_path.parent().unwrap_or(Path::new("/"));
        let bind = bind_source("vsock.uds_path (its folder)", dir, true)?;
        let others = std::fs::read_dir(dir)
            .map(|entries| {
                entries
                    .flatten()
                    .filter(|e| {
                        let name = e.file_name().to_string_lossy().into_owned();
                        let own = v
                            .uds_path
                            .file_name()
                            .map(|n| n.to_string_lossy().into_owned());
                        own.is_none_or(|own| name != own && !name.starts_with(&format!("{own}_")))
                    })
                    .count()
            })
            .unwrap_or(0);
        if others > 0 {
            tracing::warn!(
                folder = %dir.display(),
                others,
                "jail: the vsock socket's folder, shown read-only in the jail, holds other \
                 entries; give the vsock socket a folder of its own"
            );
        }
        binds.push(bind);
    }
    if let Some(dir) = &c.snapshot_dir {
        // Read-write: PUT /vm/snapshot writes its files there.
        binds.push(bind_source("snapshot_dir", dir, false)?);
    }
    // Folders first: a file may sit in one (and is then mounted over its view there).
    binds.sort_by_key(|b| !b.dir);
    Ok(binds)
}

fn enter_namespaces(mode: Mode, jail: &JailConfig) -> Result<(), JailError> {
    if mode == Mode::UserNamespace {
        // SAFETY: getuid and getgid have no preconditions.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        // SAFETY: unshare takes flags; the process is single-threaded here (the VMM starts
        // no thread before the jail), as CLONE_NEWUSER requires.
        errno(unsafe { libc::unshare(libc::CLONE_NEWUSER) }).map_err(|e| {
            let why = match e.raw_os_error() {
                Some(libc::EPERM) | Some(libc::ENOSPC) | Some(libc::EACCES) => {
                    "the vmm lacks CAP_SYS_ADMIN (it was not started as root) and unprivileged \
                     user namespaces are disabled (sysctl user.max_user_namespaces=0, \
                     kernel.unprivileged_userns_clone=0 or an AppArmor/SELinux policy); \
                     start it as root or allow user namespaces"
                }
                Some(libc::EINVAL) => "the vmm has more than one thread",
                _ => "the kernel refused a user namespace",
            };
            JailError::Namespaces {
                what: "user",
                why: why.into(),
                source: e,
            }
        })?;
        let write = |file: &str, text: String| {
            std::fs::write(file, text).map_err(step(format!("write {file}")))
        };
        write("/proc/self/setgroups", "deny".into())?;
        write("/proc/self/uid_map", format!("{uid} {uid} 1"))?;
        write("/proc/self/gid_map", format!("{gid} {gid} 1"))?;
        debug_assert_eq!((uid, gid), (jail.uid, jail.gid));
    }
    let flags = libc::CLONE_NEWNS | libc::CLONE_NEWNET | libc::CLONE_NEWIPC;
    // SAFETY: unshare takes flags and touches no memory of ours.
    errno(unsafe { libc::unshare(flags) }).map_err(|e| JailError::Namespaces {
        what: "mount, network and IPC",
        why: "CAP_SYS_ADMIN is missing".into(),
        source: e,
    })
}

fn mount(
    source: Option<&Path>,
    target: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> std::io::Result<()> {
    let c = |s: &str| CString::new(s).map_err(std::io::Error::other);
    let source = source.map(|p| c(&p.to_string_lossy())).transpose()?;
    let target = c(&target.to_string_lossy())?;
    let fstype = fstype.map(c).transpose()?;
    let data = data.map(c).transpose()?;
    let ptr = |s: &Option<CString>| s.as_ref().map_or(std::ptr::null(), |s| s.as_ptr());
    // SAFETY: every pointer is null or a NUL-terminated string alive for the call.
    errno(unsafe {
        libc::mount(
            ptr(&source),
            target.as_ptr(),
            ptr(&fstype),
            flags,
            ptr(&data).cast(),
        )
    })
}

/// `ST_RELATIME` (sys/statvfs.h; the libc crate has it for glibc, not for musl).
const ST_RELATIME: libc::c_ulong = 0x1000;

/// The flags of the mount at `path` that a remount must keep (locked in a user namespace).
fn kept_flags(path: &Path) -> std::io::Result<libc::c_ulong> {
    let c = CString::new(path.to_string_lossy().as_bytes()).map_err(std::io::Error::other)?;
    // SAFETY: `statvfs` is plain data; all zeroes is a valid value.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is NUL-terminated and `st` a `statvfs` owned by this frame.
    errno(unsafe { libc::statvfs(c.as_ptr(), &mut st) })?;
    let mut flags = 0;
    for (st_flag, ms_flag) in [
        (libc::ST_NOSUID, libc::MS_NOSUID),
        (libc::ST_NODEV, libc::MS_NODEV),
        (libc::ST_NOEXEC, libc::MS_NOEXEC),
        (libc::ST_NOATIME, libc::MS_NOATIME),
        (libc::ST_NODIRATIME, libc::MS_NODIRATIME),
        (ST_RELATIME, libc::MS_RELATIME),
        (libc::ST_RDONLY, libc::MS_RDONLY),
    ] {
        if st.f_flag & st_flag != 0 {
            flags |= ms_flag;
        }
    }
    Ok(flags)
}

/// Creates the folders of `path` (not `path` itself) under `root`.
fn make_parents(root: &Path, path: &Path) -> Result<PathBuf, JailError> {
    let inside = root.join(path.strip_prefix("/").unwrap_or(path));
    if let Some(parent) = inside.parent() {
        std::fs::create_dir_all(parent).map_err(step(format!("create {}", parent.display())))?;
    }
    Ok(inside)
}

fn build_root(
    mode: Mode,
    jail: &JailConfig,
    binds: &[Bind],
    nodes: &[(&str, &str, u64, bool)],
) -> Result<(), JailError> {
    // Nothing below propagates to the host.
    mount(
        None,
        Path::new("/"),
        None,
        libc::MS_REC | libc::MS_PRIVATE,
        None,
    )
    .map_err(step("make the mounts private"))?;
    let root = ROOT_MOUNT_POINTS
        .iter()
        .map(Path::new)
        .find(|p| p.is_dir())
        .ok_or_else(|| JailError::Step {
            step: format!("find a folder to mount the new root on (one of {ROOT_MOUNT_POINTS:?})"),
            source: std::io::ErrorKind::NotFound.into(),
        })?;
    mount(
        Some(Path::new("tmpfs")),
        root,
        Some("tmpfs"),
        libc::MS_NOSUID | libc::MS_NOEXEC,
        Some("mode=0755,size=1m,nr_inodes=4096"),
    )
    .map_err(step(format!("mount a tmpfs on {}", root.display())))?;
    for b in binds {
        let target = make_parents(root, &b.path)?;
        if !target.exists() {
            if b.dir {
                std::fs::create_dir(&target)
            } else {
                File::create(&target).map(drop)
            }
            .map_err(step(format!("create {}", target.display())))?;
        }
        let source = PathBuf::from(format!("/proc/self/fd/{}", b.source.as_raw_fd()));
        mount(Some(&source), &target, None, libc::MS_BIND, None).map_err(step(format!(
            "bind {} ({})",
            b.path.display(),
            b.field
        )))?;
        let mut flags = libc::MS_REMOUNT | libc::MS_BIND | libc::MS_NOSUID | libc::MS_NOEXEC;
        flags |= kept_flags(&target).map_err(step(format!("stat {}", target.display())))?;
        if b.read_only {
            flags |= libc::MS_RDONLY;
        }
        mount(None, &target, None, flags, None).map_err(step(format!(
            "remount {} ({})",
            b.path.display(),
            b.field
        )))?;
    }
    if mode == Mode::Privileged {
        // Nodes of its own, owned by the jail user (the host's may be root's only).
        for (_, path, rdev, read_only) in nodes {
            let node = make_parents(root, Path::new(path))?;
            let c = CString::new(node.to_string_lossy().as_bytes())
                .map_err(|e| step("name a device node")(std::io::Error::other(e)))?;
            let mode = if *read_only { 0o400 } else { 0o600 };
            // SAFETY: `c` is NUL-terminated; mknod takes integers otherwise.
            errno(unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | mode, *rdev) })
                .map_err(step(format!("create {}", node.display())))?;
            std::os::unix::fs::chown(&node, Some(jail.uid), Some(jail.gid))
                .map_err(step(format!("chown {}", node.display())))?;
        }
    }
    std::env::set_current_dir(root).map_err(step(format!("enter {}", root.display())))?;
    let dot = CString::new(".").expect("no NUL");
    // SAFETY: two NUL-terminated strings; pivot_root(".", ".") stacks the old root on the new
    // one, unmounted just below.
    errno(unsafe { libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr()) })
        .map_err(step("pivot_root"))?;
    // SAFETY: a NUL-terminated string and flags.
    errno(unsafe { libc::umount2(dot.as_ptr(), libc::MNT_DETACH) })
        .map_err(step("unmount the host's root"))?;
    std::env::set_current_dir("/").map_err(step("enter /"))?;
    let flags = libc::MS_REMOUNT
        | libc::MS_BIND
        | libc::MS_RDONLY
        | kept_flags(Path::new("/")).map_err(step("stat /"))?;
    mount(None, Path::new("/"), None, flags, None).map_err(step("make / read-only"))
}

/// Drops every capability and changes to the jail user (privileged mode) or stays the user
/// (user namespace mode, where the capabilities are the namespace's).
fn drop_privileges(mode: Mode, jail: &JailConfig, last_cap: u32) -> Result<(), JailError> {
    for cap in 0..=last_cap {
        // SAFETY: prctl with integer arguments.
        let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
        if rc != 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL) {
            return Err(
                step(format!("drop capability {cap} from the bounding set"))(
                    std::io::Error::last_os_error(),
                ),
            );
        }
    }
    // SAFETY: prctl with integer arguments.
    errno(unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    })
    .map_err(step("clear the ambient capabilities"))?;
    if mode == Mode::Privileged {
        // SAFETY: zero groups, a null list is allowed.
        errno(unsafe { libc::setgroups(0, std::ptr::null()) })
            .map_err(step("clear the supplementary groups"))?;
        // SAFETY: setresgid and setresuid take integers. Leaving uid 0 clears the
        // permitted and effective capabilities.
        errno(unsafe { libc::setresgid(jail.gid, jail.gid, jail.gid) })
            .map_err(step(format!("change to group {}", jail.gid)))?;
        // SAFETY: as above.
        errno(unsafe { libc::setresuid(jail.uid, jail.uid, jail.uid) })
            .map_err(step(format!("change to user {}", jail.uid)))?;
    }
    let header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [CapData::default(); 2];
    // SAFETY: capset reads one header and two data structs (version 3), alive for the call.
    errno(unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) })
        .map_err(step("drop every capability"))?;
    // SAFETY: prctl with integer arguments.
    errno(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) })
        .map_err(step("set no_new_privs"))?;
    Ok(())
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

fn fork_into_pid_namespace(
    mode: Mode,
    jail: &JailConfig,
    last_cap: u32,
    filters: &Arc<Filters>,
) -> Result<(), JailError> {
    // SAFETY: unshare takes flags; the new PID namespace applies to the children only.
    errno(unsafe { libc::unshare(libc::CLONE_NEWPID) }).map_err(|e| JailError::Namespaces {
        what: "PID",
        why: "CAP_SYS_ADMIN is missing".into(),
        source: e,
    })?;
    // The child learns of its parent's end by the pipe's write end closing.
    let (alive_read, alive_write) =
        nix::unistd::pipe().map_err(|e| step("create a pipe")(e.into()))?;
    use std::io::Write;
    let _ = std::io::stdout().flush();
    // SAFETY: the process is single-threaded (no thread starts before the jail), so the
    // child may run any code.
    let pid = unsafe { libc::fork() };
    match pid {
        -1 => Err(step("fork into the PID namespace")(
            std::io::Error::last_os_error(),
        )),
        0 => {
            drop(alive_write);
            drop_privileges(mode, jail, last_cap)?;
            // After the credential change, which resets it.
            // SAFETY: prctl with integer arguments.
            errno(unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) })
                .map_err(step("set the parent-death signal"))?;
            let mut poll = libc::pollfd {
                fd: alive_read.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one pollfd owned by this frame, no wait.
            let rc = unsafe { libc::poll(&mut poll, 1, 0) };
            if rc != 0 {
                // The parent is gone already.
                std::process::exit(1);
            }
            Ok(())
        }
        child => {
            drop(alive_read);
            tracing::info!(
                pid = child,
                "jail: the vmm runs as pid 1 of its PID namespace"
            );
            let result = drop_privileges(mode, jail, last_cap)
                .map_err(|e| std::io::Error::other(e.to_string()))
                .and_then(|()| {
                    filters
                        .apply(ThreadKind::Jail)
                        .map_err(std::io::Error::other)
                });
            if let Err(e) = result {
                tracing::error!(error = %e, "jail: the waiting parent stays privileged");
            }
            wait_and_mirror(child, alive_write)
        }
    }
}

/// Waits for the jailed child and ends as it did.
fn wait_and_mirror(child: libc::pid_t, _alive: OwnedFd) -> ! {
    let mut status = 0;
    loop {
        // SAFETY: `status` is an int owned by this frame.
        let rc = unsafe { libc::waitpid(child, &mut status, 0) };
        if rc == child {
            break;
        }
        if std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            std::process::exit(1);
        }
    }
    if libc::WIFEXITED(status) {
        std::process::exit(libc::WEXITSTATUS(status));
    }
    let sig = libc::WTERMSIG(status);
    tracing::error!(signal = sig, "jail: the vmm was killed by a signal");
    let no_core = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: setrlimit reads one rlimit; signal and raise take integers. The default action
    // of `sig` ends this process as it ended the child.
    unsafe {
        libc::setrlimit(libc::RLIMIT_CORE, &no_core);
        libc::signal(sig, libc::SIG_DFL);
        libc::raise(sig);
    }
    std::process::exit(128 + sig)
}

/// Opens what the jail shows as the VMM will, as the jail user: a clear error naming the
/// field when the host agent forgot to give that user access.
fn check_access(config: &ResolvedConfig, jail: &JailConfig) -> Result<(), JailError> {
    let c = &config.config;
    let mut checks: Vec<(String, &Path, Access)> = vec![
        ("kernel.path".into(), &c.kernel.path, Access::Read),
        ("jail (/dev/kvm)".into(), Path::new(KVM), Access::ReadWrite),
    ];
    if let Some(p) = &c.kernel.initrd {
        checks.push(("kernel.initrd".into(), p, Access::Read));
    }
    for (i, d) in c.disks.iter().enumerate() {
        let access = if d.read_only {
            Access::Read
        } else {
            Access::ReadWrite
        };
        checks.push((format!("disks[{i}].path"), &d.path, access));
    }
    for (field, path, access) in checks {
        let (mode, result) = match access {
            Access::Read => ("read", File::open(path).map(drop)),
            Access::ReadWrite => (
                "read and write",
                std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(path)
                    .map(drop),
            ),
        };
        result.map_err(|e| JailError::Access {
            field,
            uid: jail.uid,
            path: path.into(),
            mode,
            source: e,
        })?;
    }
    Ok(())
}
