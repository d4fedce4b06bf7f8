//! What the host agent checks and adds when a container is created through its Engine
//! API proxy ([`crate::engine_proxy`]): bind mounts must come from a folder shared with
//! the machine (anything else would silently bind an empty directory of the guest),
//! and `host.docker.internal` resolves to the host gateway, as on Docker Desktop.

use std::path::{Component, Path, PathBuf};

use serde_json::Value;

/// The guest engine's own sockets: binding them is how containers drive the engine
/// (`-v /var/run/docker.sock:/var/run/docker.sock`), and they exist in the guest.
const ENGINE_SOCKETS: [&str; 2] = ["/var/run/docker.sock", "/run/docker.sock"];

/// The name Docker Desktop gives the host inside containers.
const HOST_GATEWAY_NAME: &str = "host.docker.internal";

/// The `ExtraHosts` entry that maps [`HOST_GATEWAY_NAME`] to the engine's host gateway.
const HOST_GATEWAY_ENTRY: &str = "host.docker.internal:host-gateway";

/// Reviews the JSON body of `POST /containers/create` before the guest engine sees it.
pub trait CreatePolicy: Send + Sync {
    /// May change `body`; an `Err` refuses the request with that message, which the
    /// docker CLI prints as `Error response from daemon: <message>`.
    fn review(&self, body: &mut Value) -> Result<(), String>;
}

/// A host folder shared with the machine, mounted in the guest at the same path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Share {
    pub host_path: PathBuf,
    pub read_only: bool,
}

/// rmachine's policy for a local machine: binds only from shares, and `host.docker.internal` when `host_gateway` is set.
#[derive(Debug, Clone)]
pub struct MachinePolicy {
    /// The machine's name, for messages.
    pub machine: String,
    /// The folders shared with the machine.
    pub shares: Vec<Share>,
    /// Whether to add `host.docker.internal:host-gateway` to every container's hosts.
    pub host_gateway: bool,
}

/// One bind mount of a create request (its mode does not matter: the guest mounts
/// read-only shares read-only).
#[derive(Debug, PartialEq, Eq)]
struct Bind {
    source: String,
}

impl CreatePolicy for MachinePolicy {
    fn review(&self, body: &mut Value) -> Result<(), String> {
        let Some(host_config) = body.get("HostConfig") else {
            return self.add_host_gateway(body);
        };
        for bind in binds(host_config) {
            self.check_bind(&bind)?;
        }
        self.add_host_gateway(body)
    }
}

impl MachinePolicy {
    fn check_bind(&self, bind: &Bind) -> Result<(), String> {
        let source = normalize(Path::new(&bind.source));
        if ENGINE_SOCKETS.iter().any(|s| source == Path::new(s)) {
            return Ok(());
        }
        // The innermost share wins: a read-only folder may be shared inside a
        // read-write one, and the guest mounts it on top.
        let share = self
            .shares
            .iter()
            .map(|s| (normalize(&s.host_path), s.read_only))
            .filter(|(path, _)| source.starts_with(path))
            .max_by_key(|(path, _)| path.components().count());
        match share {
            None => Err(format!(
                "rmachine: bind mount source {} is not shared with machine \"{}\" (shared: {}); \
                 share it with `rmachine create --mount PATH`",
                source.display(),
                self.machine,
                self.shared_list(),
            )),
            // A bind into a read-only share is allowed as asked: the guest mounts that
            // share read-only, so the container can read it and its writes fail with
            // EROFS, as with any read-only export.
            Some(_) => Ok(()),
        }
    }

    fn shared_list(&self) -> String {
        if self.shares.is_empty() {
            return "nothing".into();
        }
        let names: Vec<String> = self
            .shares
            .iter()
            .map(|s| {
                format!(
                    "{}{}",
                    normalize(&s.host_path).display(),
                    if s.read_only { " (read-only)" } else { "" }
                )
            })
            .collect();
        names.join(", ")
    }

    fn add_host_gateway(&self, body: &mut Value) -> Result<(), String> {
        if !self.host_gateway {
            return Ok(());
        }
        let Some(body) = body.as_object_mut() else {
            return Ok(());
        };
        let host_config = body.entry("HostConfig").or_insert(Value::Null);
        if host_config.is_null() {
            *host_config = Value::Object(serde_json::Map::new());
        }
        let Some(host_config) = host_config.as_object_mut() else {
            return Ok(());
        };
        let extra_hosts = host_config.entry("ExtraHosts").or_insert(Value::Null);
        if extra_hosts.is_null() {
            *extra_hosts = Value::Array(Vec::new());
        }
        let Some(extra_hosts) = extra_hosts.as_array_mut() else {
            return Ok(());
        };
        let present = extra_hosts.iter().filter_map(Value::as_str).any(|entry| {
            // `name:ip`, or `name=ip` as newer CLIs also accept.
            let name = entry.split([':', '=']).next().unwrap_or_default();
            name.trim().eq_ignore_ascii_case(HOST_GATEWAY_NAME)
        });
        if !present {
            extra_hosts.push(Value::String(HOST_GATEWAY_ENTRY.into()));
        }
        Ok(())
    }
}

/// rmachine's policy for an ssh machine: its engine runs on another host, which cannot
/// see this computer's folders (there are no shares over SSH). A bind mount from the
/// user's home folder here (what `-v "$PWD":/src` gives) is refused with a message that
/// says so, instead of silently binding the remote host's directory of that name; other
/// sources are the remote host's own paths and pass.
#[derive(Debug, Clone)]
pub struct RemotePolicy {
    /// The machine's name, for messages.
    pub machine: String,
    /// The remote host (`user@host`), for messages.
    pub host: String,
    /// This computer's home folder.
    pub local_home: Option<PathBuf>,
}

impl CreatePolicy for RemotePolicy {
    fn review(&self, body: &mut Value) -> Result<(), String> {
        let Some(host_config) = body.get("HostConfig") else {
            return Ok(());
        };
        let Some(home) = self.local_home.as_deref().map(normalize) else {
            return Ok(());
        };
        if home == Path::new("/") {
            return Ok(());
        }
        for bind in binds(host_config) {
            let source = normalize(Path::new(&bind.source));
            if source.starts_with(&home) {
                return Err(format!(
                    "rmachine: machine \"{}\" is an ssh machine: its engine runs on {}, which cannot see \
                     this computer's folders (no shares over SSH), so bind mount source {} would be \
                     that host's own directory; copy the files into a volume or the image instead \
                     (docker cp, COPY in a build)",
                    self.machine,
                    self.host,
                    bind.source
                ));
            }
        }
        Ok(())
    }
}

/// The bind mounts of a create request's `HostConfig`: `Binds` entries whose source is
/// an absolute path (a name is a volume), and `Mounts` of type `bind`.
fn binds(host_config: &Value) -> Vec<Bind> {
    let mut out = Vec::new();
    for entry in host_config
        .get("Binds")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let Some(entry) = entry.as_str() else {
            continue;
        };
        let source = entry.split(':').next().unwrap_or_default();
        if !source.starts_with('/') {
            continue;
        }
        out.push(Bind {
            source: source.to_string(),
        });
    }
    for mount in host_config
        .get("Mounts")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if mount.get("Type").and_then(Value::as_str) != Some("bind") {
            continue;
        }
        let source = mount
            .get("Source")
            .and_then(Value::as_str)
            .unwrap_or_default();
        out.push(Bind {
            source: source.to_string(),
        });
    }
    out
}

/// `path` with `.` and `..` resolved lexically (`..` of the root is the root), without
/// touching the file system: the path names a guest directory, which the host may lack.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for component in path.components() {
        match component {
            Component::Normal(name) => out.push(name),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_remote_policy_refuses_laptop_folders_only() {
        let p = RemotePolicy {
            machine: "far".into(),
            host: "me@box".into(),
            local_home: Some("/home/me".into()),
        };
        let mut body = serde_json::json!({"HostConfig": {"Binds": ["/home/me/src:/src"]}});
        let err = p.review(&mut body).unwrap_err();
        assert!(
            err.contains("ssh machine") && err.contains("me@box") && err.contains("/home/me/src"),
            "{err}"
        );
        let mut mounts = serde_json::json!({"HostConfig": {"Mounts": [{"Type": "bind", "Source": "/home/me/../me/x"}]}});
        assert!(p.review(&mut mounts).is_err());
        for ok in [
            serde_json::json!({"HostConfig": {"Binds": ["/srv/data:/data", "vol:/v", "/var/run/docker.sock:/var/run/docker.sock"]}}),
            serde_json::json!({"Image": "x"}),
        ] {
            let mut b = ok.clone();
            p.review(&mut b).unwrap();
            assert_eq!(b, ok, "nothing added for a remote engine");
        }
    }
    use serde_json::json;

    fn policy() -> MachinePolicy {
        MachinePolicy {
            machine: "default".into(),
            shares: vec![
                Share {
                    host_path: "/home/u".into(),
                    read_only: false,
                },
                Share {
                    host_path: "/data/".into(),
                    read_only: true,
                },
                Share {
                    host_path: "/home/u/rw/ro".into(),
                    read_only: true,
                },
            ],
            host_gateway: false,
        }
    }

    fn review_binds(binds: &[&str]) -> Result<(), String> {
        policy().review(&mut json!({"Image": "alpine", "HostConfig": {"Binds": binds}}))
    }

    fn review_mount(source: &str, read_only: bool) -> Result<(), String> {
        policy().review(&mut json!({"HostConfig": {"Mounts": [
            {"Type": "bind", "Source": source, "Target": "/x", "ReadOnly": read_only}
        ]}}))
    }

    #[test]
    fn test_normalize_is_lexical() {
        assert_eq!(
            normalize(Path::new("/home/u/../../etc/./x/")),
            Path::new("/etc/x")
        );
        assert_eq!(normalize(Path::new("/../..")), Path::new("/"));
        assert_eq!(normalize(Path::new("//home//u")), Path::new("/home/u"));
    }

    #[test]
    fn test_binds_inside_a_share_are_allowed() {
        assert_eq!(
            review_binds(&["/home/u/src:/src", "/home/u:/h:rw", "/data/x:/x:ro,z"]),
            Ok(())
        );
    }

    #[cfg_attr(
        windows,
        ignore = "shared folders are Linux-only so far: Windows paths are not yet translated to the guest's"
    )]
    #[test]
    fn test_bind_outside_the_shares_is_refused() {
        let err = review_binds(&["/home/u/src:/src", "/srv/x:/x"]).unwrap_err();
        assert_eq!(
            err,
            "rmachine: bind mount source /srv/x is not shared with machine \"default\" (shared: /home/u, \
             /data (read-only), /home/u/rw/ro (read-only)); share it with `rmachine create --mount PATH`"
        );
    }

    #[test]
    fn test_prefix_is_component_wise() {
        assert!(review_binds(&["/home/user:/x"]).is_err());
        assert!(review_binds(&["/data2:/x:ro"]).is_err());
        assert!(review_binds(&["/home:/x"]).is_err());
    }

    #[test]
    fn test_dotdot_escape_is_refused() {
        let err = review_binds(&["/home/u/../../etc:/x"]).unwrap_err();
        assert!(err.contains("source /etc is not shared"), "{err}");
        assert_eq!(review_binds(&["/home/u/a/../b/./c:/x"]), Ok(()));
    }

    #[test]
    fn test_named_volumes_are_allowed() {
        assert_eq!(review_binds(&["myvol:/data", "other:/o:ro"]), Ok(()));
        let mut body =
            json!({"HostConfig": {"Mounts": [{"Type": "volume", "Source": "v", "Target": "/v"}]}});
        assert_eq!(policy().review(&mut body), Ok(()));
    }

    #[test]
    fn test_engine_socket_is_allowed() {
        assert_eq!(
            review_binds(&[
                "/var/run/docker.sock:/var/run/docker.sock",
                "/run/docker.sock:/s"
            ]),
            Ok(())
        );
        assert_eq!(review_mount("/var/run/docker.sock", false), Ok(()));
        assert!(review_binds(&["/var/run:/x"]).is_err());
    }

    #[test]
    fn test_mounts_binds_are_checked() {
        assert_eq!(review_mount("/home/u/x", false), Ok(()));
        let err = review_mount("/etc", false).unwrap_err();
        assert!(
            err.contains("source /etc is not shared with machine \"default\""),
            "{err}"
        );
        assert!(review_mount("/home/u/../../etc", true).is_err());
    }

    #[test]
    fn test_read_only_share_accepts_binds_read_only_or_not() {
        assert_eq!(review_binds(&["/data/x:/x"]), Ok(()));
        assert_eq!(review_binds(&["/data/x:/x:rw"]), Ok(()));
        assert_eq!(review_binds(&["/data/x:/x:ro"]), Ok(()));
        assert_eq!(review_mount("/data/x", false), Ok(()));
        assert_eq!(review_mount("/data/x", true), Ok(()));
        assert_eq!(review_binds(&["/home/u/rw/ro/f:/x"]), Ok(()));
        assert!(review_binds(&["/data2/x:/x"]).is_err());
    }

    #[test]
    fn test_no_shares_refuses_every_bind() {
        let p = MachinePolicy {
            machine: "m".into(),
            shares: vec![],
            host_gateway: false,
        };
        let err = p
            .review(&mut json!({"HostConfig": {"Binds": ["/tmp:/t"]}}))
            .unwrap_err();
        assert!(err.contains("(shared: nothing)"), "{err}");
    }

    #[test]
    fn test_host_gateway_is_added() {
        let p = MachinePolicy {
            host_gateway: true,
            ..policy()
        };
        let mut body = json!({"Image": "alpine"});
        p.review(&mut body).unwrap();
        assert_eq!(
            body,
            json!({"Image": "alpine", "HostConfig": {"ExtraHosts": [HOST_GATEWAY_ENTRY]}})
        );

        let mut body = json!({"HostConfig": {"ExtraHosts": null, "Binds": null}});
        p.review(&mut body).unwrap();
        assert_eq!(
            body["HostConfig"]["ExtraHosts"],
            json!([HOST_GATEWAY_ENTRY])
        );

        let mut body = json!({"HostConfig": null});
        p.review(&mut body).unwrap();
        assert_eq!(
            body["HostConfig"]["ExtraHosts"],
            json!([HOST_GATEWAY_ENTRY])
        );

        let mut body = json!({"HostConfig": {"ExtraHosts": ["db:10.0.0.2"]}});
        p.review(&mut body).unwrap();
        assert_eq!(
            body["HostConfig"]["ExtraHosts"],
            json!(["db:10.0.0.2", HOST_GATEWAY_ENTRY])
        );
    }

    #[test]
    fn test_existing_host_docker_internal_is_kept() {
        let p = MachinePolicy {
            host_gateway: true,
            ..policy()
        };
        for entry in [
            "host.docker.internal:10.1.2.3",
            "Host.Docker.Internal=10.1.2.3",
        ] {
            let mut body = json!({"HostConfig": {"ExtraHosts": [entry]}});
            p.review(&mut body).unwrap();
            assert_eq!(body["HostConfig"]["ExtraHosts"], json!([entry]));
        }
    }

    #[test]
    fn test_host_gateway_off_leaves_the_body_alone() {
        let mut body = json!({"Image": "alpine"});
        policy().review(&mut body).unwrap();
        assert_eq!(body, json!({"Image": "alpine"}));
    }
}
