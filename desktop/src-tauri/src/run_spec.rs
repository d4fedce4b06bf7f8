//! Running an image from the Images page: the form's fields (ports, volumes, environment,
//! command) parsed and checked here, each refusal naming the field, the problem and what
//! to write instead; then the container is created and started through the machine's
//! Engine API. Its docker.sock is the host agent's proxy, which refuses a bind mount from
//! a folder the machine does not share, with its own message (`hostproxy`'s
//! `create_policy`); that message reaches the UI as it is.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv6Addr};
use std::path::Path;

use bollard::models::{ContainerCreateBody, HostConfig, PortBinding};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, InspectContainerOptions, RemoveContainerOptionsBuilder,
    StartContainerOptions,
};
use bollard::Docker;
use serde::{Deserialize, Serialize};

use crate::error::{CommandError, CommandResult, ErrorKind};

/// The Run form, as the UI sends it (multi-line fields are one entry per line).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunForm {
    pub image: String,
    /// Empty: the engine makes one up.
    #[serde(default)]
    pub name: String,
    /// `HOST:CONTAINER[/PROTO]` (or `IP:HOST:CONTAINER…`, or `CONTAINER` for any free host
    /// port), one a line or separated by commas.
    #[serde(default)]
    pub ports: String,
    /// `HOST_FOLDER:CONTAINER_PATH[:ro]` or `VOLUME:CONTAINER_PATH[:ro]`, one a line.
    #[serde(default)]
    pub volumes: String,
    /// `KEY=VALUE`, one a line (`#` comments and empty lines skipped).
    #[serde(default)]
    pub env: String,
    /// The command and its arguments, split as a shell would (quotes keep spaces); empty:
    /// the image's own.
    #[serde(default)]
    pub command: String,
}

/// A protocol a port is published for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Proto {
    Tcp,
    Udp,
    Sctp,
}

impl Proto {
    fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Sctp => "sctp",
        }
    }
}

/// One published port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortSpec {
    pub host_ip: Option<IpAddr>,
    /// `None`: any free port.
    pub host_port: Option<u16>,
    pub container_port: u16,
    pub proto: Proto,
}

/// One volume or bind mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeSpec {
    /// A host folder (absolute path) or a volume's name.
    pub source: String,
    pub target: String,
    pub read_only: bool,
    /// `source` is a host folder.
    pub bind: bool,
}

/// A checked Run form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunSpec {
    pub image: String,
    pub name: Option<String>,
    pub ports: Vec<PortSpec>,
    pub volumes: Vec<VolumeSpec>,
    pub env: Vec<(String, String)>,
    pub command: Vec<String>,
}

const PORT_EXAMPLE: &str = "write HOST:CONTAINER, e.g. 8080:80 or 5353:53/udp";

fn port_number(s: &str, whole: &str, which: &str) -> Result<u16, String> {
    match s.parse::<u32>() {
        Ok(n) if (1..=65535).contains(&n) => Ok(n as u16),
        Ok(_) => Err(format!(
            "port \"{whole}\": {which} port {s} is not a port number (1 to 65535); {PORT_EXAMPLE}"
        )),
        Err(_) if s.is_empty() => Err(format!(
            "port \"{whole}\": the {which} port is missing; {PORT_EXAMPLE}"
        )),
        Err(_) => Err(format!(
            "port \"{whole}\": {which} port \"{s}\" is not a number; {PORT_EXAMPLE}"
        )),
    }
}

/// `[IP:]HOST:CONTAINER[/PROTO]` or `CONTAINER[/PROTO]`.
pub fn parse_port(s: &str) -> Result<PortSpec, String> {
    let whole = s;
    let (rest, proto) = match s.rsplit_once('/') {
        Some((rest, p)) => {
            let proto = match p.to_ascii_lowercase().as_str() {
                "tcp" => Proto::Tcp,
                "udp" => Proto::Udp,
                "sctp" => Proto::Sctp,
                _ => {
                    return Err(format!(
                        "port \"{whole}\": protocol \"{p}\" is not tcp, udp or sctp; {PORT_EXAMPLE}"
                    ))
                }
            };
            (rest, proto)
        }
        None => (s, Proto::Tcp),
    };
    // An IPv6 address is written in brackets: [::1]:8080:80.
    let (host_ip, rest) = if let Some(r) = rest.strip_prefix('[') {
        let (ip, r) = r.split_once("]:").ok_or_else(|| {
            format!("port \"{whole}\": write an IPv6 address in brackets, e.g. [::1]:8080:80")
        })?;
        let ip: Ipv6Addr = ip.parse().map_err(|_| {
            format!("port \"{whole}\": \"{ip}\" is not an IPv6 address; e.g. [::1]:8080:80")
        })?;
        (Some(IpAddr::V6(ip)), r)
    } else {
        let parts: Vec<&str> = rest.split(':').collect();
        match parts.len() {
            1 | 2 => (None, rest),
            3 => {
                let ip: IpAddr = parts[0].parse().map_err(|_| {
                    format!(
                        "port \"{whole}\": \"{}\" is not an IP address; write IP:HOST:CONTAINER, e.g. 127.0.0.1:8080:80",
                        parts[0]
                    )
                })?;
                (Some(ip), &rest[parts[0].len() + 1..])
            }
            _ => return Err(format!("port \"{whole}\": too many colons; {PORT_EXAMPLE}")),
        }
    };
    let (host_port, container_port) = match rest.split_once(':') {
        Some((h, c)) => (
            Some(port_number(h, whole, "host")?),
            port_number(c, whole, "container")?,
        ),
        None if host_ip.is_some() => {
            return Err(format!(
                "port \"{whole}\": give the host port after the address; e.g. 127.0.0.1:8080:80"
            ))
        }
        None => (None, port_number(rest, whole, "container")?),
    };
    Ok(PortSpec {
        host_ip,
        host_port,
        container_port,
        proto,
    })
}

/// The Ports field: entries one a line or separated by commas or spaces; a host port
/// given twice (for the same protocol) is refused.
pub fn parse_ports(text: &str) -> Result<Vec<PortSpec>, String> {
    let mut out: Vec<PortSpec> = Vec::new();
    for entry in text
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|e| !e.is_empty())
    {
        let p = parse_port(entry)?;
        if let Some(host) = p.host_port {
            if out
                .iter()
                .any(|q| q.host_port == Some(host) && q.proto == p.proto)
            {
                return Err(format!(
                    "port \"{entry}\": host port {host}/{} is given twice; give each container port its own host port",
                    p.proto.as_str()
                ));
            }
        }
        out.push(p);
    }
    Ok(out)
}

/// Whether `s` is a volume's name (as the engine accepts them).
fn is_volume_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

/// Whether `s` is an absolute host path (a Windows one too: `C:\…`).
fn is_host_path(s: &str) -> bool {
    let b = s.as_bytes();
    s.starts_with('/')
        || s.starts_with("\\\\")
        || (b.len() >= 3
            && b[0].is_ascii_alphabetic()
            && b[1] == b':'
            && (b[2] == b'\\' || b[2] == b'/'))
}

/// `SOURCE:TARGET[:ro|:rw]`, where SOURCE is a host folder or a volume's name.
pub fn parse_volume(s: &str) -> Result<VolumeSpec, String> {
    let example = "write HOST_FOLDER:CONTAINER_PATH, e.g. /home/me/site:/usr/share/site:ro";
    let (rest, read_only) = if let Some(r) = s.strip_suffix(":ro") {
        (r, true)
    } else if let Some(r) = s.strip_suffix(":rw") {
        (r, false)
    } else {
        (s, false)
    };
    let (source, target) = rest
        .rsplit_once(':')
        .filter(|(src, _)| !src.is_empty())
        .ok_or_else(|| format!("volume \"{s}\": the container path is missing; {example}"))?;
    if !target.starts_with('/') {
        return Err(format!(
            "volume \"{s}\": the container path \"{target}\" must be absolute (start with /); {example}"
        ));
    }
    let bind = is_host_path(source);
    if !bind && !is_volume_name(source) {
        return Err(format!(
            "volume \"{s}\": \"{source}\" is neither an absolute folder path nor a volume name; {example}"
        ));
    }
    Ok(VolumeSpec {
        source: source.to_string(),
        target: target.to_string(),
        read_only,
        bind,
    })
}

/// `KEY=VALUE` lines (environment, build arguments): empty lines and `#` comments are
/// skipped; `what` names the field in messages.
pub fn parse_env(text: &str, what: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err(format!(
                "{what} line {} (\"{trimmed}\"): there is no \"=\"; write KEY=VALUE, e.g. MODE=debug",
                n + 1
            ));
        };
        let key = key.trim();
        if key.is_empty() {
            return Err(format!(
                "{what} line {} (\"{trimmed}\"): the name before \"=\" is empty; write KEY=VALUE",
                n + 1
            ));
        }
        if key.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!(
                "{what} line {} (\"{trimmed}\"): the name \"{key}\" has a space in it; write KEY=VALUE with a name of letters, digits and _",
                n + 1
            ));
        }
        out.push((key.to_string(), value.to_string()));
    }
    Ok(out)
}

/// Splits a command line as a POSIX shell would split words: spaces separate, quotes
/// ('…' literally, "…" with \" and \\) and a backslash keep them.
pub fn split_command(s: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => cur.push(c),
                        None => return Err(unclosed('\'')),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => cur.push(c),
                            Some(c) => {
                                cur.push('\\');
                                cur.push(c);
                            }
                            None => return Err(unclosed('"')),
                        },
                        Some(c) => cur.push(c),
                        None => return Err(unclosed('"')),
                    }
                }
            }
            '\\' => {
                in_word = true;
                if let Some(c) = chars.next() {
                    cur.push(c);
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    Ok(words)
}

fn unclosed(q: char) -> String {
    format!("command: a {q} quote is not closed; close it, or put a \\ before it")
}

/// A container name the engine accepts: `[a-zA-Z0-9][a-zA-Z0-9_.-]+`.
pub fn check_container_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let ok = name.len() >= 2
        && chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "container name \"{name}\": use two or more letters, digits, _ . or -, starting with a letter or digit (or leave it empty for a made-up name)"
        ))
    }
}

/// An image name and tag a build may give (`[registry[:port]/]path[:tag]`, the engine's
/// grammar, lowercase path).
pub fn check_tag(reference: &str) -> Result<(), String> {
    let example = "e.g. myapp:latest or registry.local:5000/team/app:1.2";
    if reference.trim().is_empty() {
        return Err(format!("the image has no name: give it one, {example}"));
    }
    let bad = |why: &str| Err(format!("image name \"{reference}\": {why}; {example}"));
    if reference.chars().any(char::is_whitespace) {
        return bad("it has a space in it");
    }
    if reference.contains('@') {
        return bad("a build gives a tag, not a digest (@…)");
    }
    // The tag: after the last ':' that is not followed by a '/'.
    let (name, tag) = match reference.rfind(':') {
        Some(i) if !reference[i + 1..].contains('/') => {
            (&reference[..i], Some(&reference[i + 1..]))
        }
        _ => (reference, None),
    };
    if let Some(tag) = tag {
        let mut chars = tag.chars();
        let ok = tag.len() <= 128
            && chars
                .next()
                .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
        if !ok {
            return bad(&format!(
                "the tag \"{tag}\" must be 1 to 128 letters, digits, _ . or -, not starting with . or -"
            ));
        }
    }
    if name.len() > 255 {
        return bad("the name is longer than 255 characters");
    }
    let mut components: Vec<&str> = name.split('/').collect();
    // A first component with '.' or ':' (or localhost) is a registry host.
    if components.len() > 1 {
        let first = components[0];
        if first.contains(['.', ':']) || first == "localhost" {
            let (host, port) = first.split_once(':').unwrap_or((first, "1"));
            let host_ok = !host.is_empty()
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || ".-".contains(c));
            if !host_ok || port.parse::<u16>().is_err() {
                return bad(&format!("\"{first}\" is not a registry host[:port]"));
            }
            components.remove(0);
        }
    }
    for c in components {
        if c.is_empty() {
            return bad("it has an empty part between slashes");
        }
        if c.chars().any(|ch| ch.is_ascii_uppercase()) {
            return bad("image names must be lowercase");
        }
        let b = c.as_bytes();
        let ok = b.first().is_some_and(u8::is_ascii_alphanumeric)
            && b.last().is_some_and(u8::is_ascii_alphanumeric)
            && c.chars()
                .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || "._-".contains(ch))
            && !c.contains("..")
            && !c.contains("___");
        if !ok {
            return bad(&format!(
                "\"{c}\" must be lowercase letters and digits, separated by . _ __ or -"
            ));
        }
    }
    Ok(())
}

fn invalid(message: String) -> CommandError {
    CommandError::new(ErrorKind::Invalid, message)
}

impl RunForm {
    /// Checks every field; `host_folders_here`: bind sources are this computer's folders
    /// (a local machine), so a missing one is refused here.
    pub fn parse(&self, host_folders_here: bool) -> CommandResult<RunSpec> {
        let image = self.image.trim();
        if image.is_empty() {
            return Err(invalid(
                "no image to run: pick one in the Images list".into(),
            ));
        }
        let name = self.name.trim();
        if !name.is_empty() {
            check_container_name(name).map_err(invalid)?;
        }
        let ports = parse_ports(&self.ports).map_err(invalid)?;
        let mut volumes = Vec::new();
        for line in self
            .volumes
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
        {
            let v = parse_volume(line).map_err(invalid)?;
            if v.bind && host_folders_here {
                let p = Path::new(&v.source);
                if !p.is_dir() {
                    return Err(invalid(format!(
                        "volume \"{line}\": the folder {} does not exist on this computer; create it, or pick another with Add folder…",
                        v.source
                    )));
                }
            }
            volumes.push(v);
        }
        let env = parse_env(&self.env, "environment").map_err(invalid)?;
        let command = split_command(&self.command).map_err(invalid)?;
        Ok(RunSpec {
            image: image.to_string(),
            name: (!name.is_empty()).then(|| name.to_string()),
            ports,
            volumes,
            env,
            command,
        })
    }
}

impl RunSpec {
    /// The engine's create request.
    pub fn create_body(&self) -> ContainerCreateBody {
        let mut exposed: HashMap<String, HashMap<(), ()>> = HashMap::new();
        let mut bindings: BTreeMap<String, Vec<PortBinding>> = BTreeMap::new();
        for p in &self.ports {
            let key = format!("{}/{}", p.container_port, p.proto.as_str());
            exposed.insert(key.clone(), HashMap::new());
            bindings.entry(key).or_default().push(PortBinding {
                host_ip: p.host_ip.map(|ip| ip.to_string()),
                host_port: Some(p.host_port.map(|n| n.to_string()).unwrap_or_default()),
            });
        }
        let binds: Vec<String> = self
            .volumes
            .iter()
            .map(|v| {
                format!(
                    "{}:{}{}",
                    v.source,
                    v.target,
                    if v.read_only { ":ro" } else { "" }
                )
            })
            .collect();
        ContainerCreateBody {
            image: Some(self.image.clone()),
            env: (!self.env.is_empty())
                .then(|| self.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            cmd: (!self.command.is_empty()).then(|| self.command.clone()),
            exposed_ports: (!exposed.is_empty()).then_some(exposed),
            host_config: Some(HostConfig {
                binds: (!binds.is_empty()).then_some(binds),
                port_bindings: (!bindings.is_empty())
                    .then(|| bindings.into_iter().map(|(k, v)| (k, Some(v))).collect()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}

/// A container the Run form started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Started {
    pub id: String,
    pub name: String,
}

/// Creates and starts the container; one that is created but cannot start is removed
/// again (the form can be sent again once the cause is fixed).
pub async fn run(docker: &Docker, spec: &RunSpec) -> CommandResult<Started> {
    let options = spec
        .name
        .as_deref()
        .map(|n| CreateContainerOptionsBuilder::new().name(n).build());
    let created = docker
        .create_container(options, spec.create_body())
        .await
        .map_err(|e| {
            let e = CommandError::from(e);
            match e.kind {
                ErrorKind::NotFound => CommandError::new(
                    ErrorKind::NotFound,
                    format!(
                        "{}; build or load the image {} first",
                        e.message, spec.image
                    ),
                ),
                _ => e,
            }
        })?;
    if let Err(e) = docker
        .start_container(&created.id, None::<StartContainerOptions>)
        .await
    {
        let _ = docker
            .remove_container(
                &created.id,
                Some(RemoveContainerOptionsBuilder::new().force(true).build()),
            )
            .await;
        let e = CommandError::from(e);
        return Err(CommandError::new(
            e.kind,
            format!(
                "the container was made but did not start: {}; it was removed again: change what the message names and run it again",
                e.message
            ),
        ));
    }
    let name = docker
        .inspect_container(&created.id, None::<InspectContainerOptions>)
        .await
        .ok()
        .and_then(|c| c.name)
        .map(|n| n.trim_start_matches('/').to_string())
        .unwrap_or_else(|| created.id.chars().take(12).collect());
    Ok(Started {
        id: created.id,
        name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_ports_parse_host_container_and_proto() {
        assert_eq!(
            parse_port("8080:80").unwrap(),
            PortSpec {
                host_ip: None,
                host_port: Some(8080),
                container_port: 80,
                proto: Proto::Tcp
            }
        );
        let p = parse_port("5353:53/UDP").unwrap();
        assert_eq!(
            (p.host_port, p.container_port, p.proto),
            (Some(5353), 53, Proto::Udp)
        );
        let p = parse_port("127.0.0.1:8080:80/tcp").unwrap();
        assert_eq!(p.host_ip, Some("127.0.0.1".parse().unwrap()));
        let p = parse_port("[::1]:8080:80").unwrap();
        assert_eq!(p.host_ip, Some("::1".parse().unwrap()));
        assert_eq!(p.host_port, Some(8080));
        let p = parse_port("80").unwrap();
        assert_eq!((p.host_port, p.container_port), (None, 80));
    }

    #[test]
    fn test_bad_ports_are_refused_with_the_reason() {
        let err = parse_port("99999:80").unwrap_err();
        assert!(
            err.contains("99999 is not a port number (1 to 65535)"),
            "{err}"
        );
        assert!(err.contains("e.g. 8080:80"), "{err}");
        assert!(parse_port("0:80").unwrap_err().contains("host port 0"));
        assert!(parse_port("8080:0")
            .unwrap_err()
            .contains("container port 0"));
        assert!(parse_port("web:80")
            .unwrap_err()
            .contains("\"web\" is not a number"));
        assert!(parse_port(":80")
            .unwrap_err()
            .contains("host port is missing"));
        assert!(parse_port("80:")
            .unwrap_err()
            .contains("container port is missing"));
        assert!(parse_port("80:80/http")
            .unwrap_err()
            .contains("\"http\" is not tcp"));
        assert!(parse_port("1.2.3:80:80")
            .unwrap_err()
            .contains("not an IP address"));
        assert!(parse_port("1:2:3:4")
            .unwrap_err()
            .contains("too many colons"));
        assert!(parse_port("[::1:80:80").unwrap_err().contains("brackets"));
    }

    #[test]
    fn test_port_lists_split_and_refuse_a_host_port_twice() {
        let ps = parse_ports("8080:80, 8443:443\n5353:53/udp 53:53/tcp").unwrap();
        assert_eq!(ps.len(), 4);
        assert!(parse_ports("").unwrap().is_empty());
        // The same host port for two protocols is fine; twice for one is not.
        assert!(parse_ports("53:53/udp,53:53/tcp").is_ok());
        let err = parse_ports("8080:80,8080:81").unwrap_err();
        assert!(err.contains("host port 8080/tcp is given twice"), "{err}");
    }

    #[test]
    fn test_volumes_parse_binds_and_named_volumes() {
        assert_eq!(
            parse_volume("/home/me/site:/srv:ro").unwrap(),
            VolumeSpec {
                source: "/home/me/site".into(),
                target: "/srv".into(),
                read_only: true,
                bind: true
            }
        );
        let v = parse_volume("data:/var/lib/data").unwrap();
        assert!(!v.bind && !v.read_only);
        let v = parse_volume("C:\\Users\\me\\site:/srv:rw").unwrap();
        assert_eq!((v.source.as_str(), v.bind), ("C:\\Users\\me\\site", true));
        assert!(parse_volume("/home/me")
            .unwrap_err()
            .contains("container path is missing"));
        assert!(parse_volume("/a:srv")
            .unwrap_err()
            .contains("must be absolute"));
        assert!(parse_volume("my data:/srv")
            .unwrap_err()
            .contains("neither an absolute folder path nor a volume name"));
        assert!(parse_volume("./site:/srv").unwrap_err().contains("neither"));
    }

    #[test]
    fn test_env_lines_are_key_value() {
        let env = parse_env("A=1\n\n# note\nB = two words \r\nC=\nD=x=y", "environment").unwrap();
        assert_eq!(
            env,
            [
                ("A".into(), "1".into()),
                ("B".into(), " two words ".into()),
                ("C".into(), "".into()),
                ("D".into(), "x=y".into())
            ]
        );
        let err = parse_env("A=1\nNOVALUE", "environment").unwrap_err();
        assert!(
            err.contains("environment line 2 (\"NOVALUE\"): there is no \"=\""),
            "{err}"
        );
        assert!(parse_env("=1", "build argument")
            .unwrap_err()
            .contains("build argument line 1"));
        assert!(parse_env("MY KEY=1", "environment")
            .unwrap_err()
            .contains("has a space"));
    }

    #[test]
    fn test_commands_split_like_a_shell() {
        assert_eq!(split_command("").unwrap(), Vec::<String>::new());
        assert_eq!(
            split_command(r#"sh -c 'echo "hi there"; exit 3'"#).unwrap(),
            ["sh", "-c", r#"echo "hi there"; exit 3"#]
        );
        assert_eq!(
            split_command(r#"printf "a\"b" c\ d ''"#).unwrap(),
            ["printf", "a\"b", "c d", ""]
        );
        assert!(split_command("echo 'oops")
            .unwrap_err()
            .contains("not closed"));
        assert!(split_command("echo \"oops")
            .unwrap_err()
            .contains("not closed"));
    }

    #[test]
    fn test_container_names_and_tags_are_checked() {
        assert!(check_container_name("web-1.a_b").is_ok());
        assert!(check_container_name("a").is_err());
        assert!(check_container_name("-web").is_err());
        assert!(check_container_name("my web").is_err());
        for ok in [
            "app",
            "app:1.0",
            "team/app:latest",
            "registry.local:5000/team/app:v_2",
            "localhost/app",
            "a__b/c-d.e",
        ] {
            assert!(check_tag(ok).is_ok(), "{ok}: {:?}", check_tag(ok));
        }
        assert!(check_tag("").unwrap_err().contains("no name"));
        assert!(check_tag("  ").unwrap_err().contains("no name"));
        assert!(check_tag("MyApp").unwrap_err().contains("lowercase"));
        assert!(check_tag("app:").unwrap_err().contains("tag \"\""));
        assert!(check_tag("app:-x").unwrap_err().contains("tag"));
        assert!(check_tag("app name").unwrap_err().contains("space"));
        assert!(check_tag("a//b").unwrap_err().contains("empty part"));
        assert!(check_tag("app@sha256:abc").unwrap_err().contains("digest"));
        assert!(check_tag("reg:99999/app").unwrap_err().contains("registry"));
    }

    #[test]
    fn test_run_form_checks_folders_and_makes_the_create_body() {
        let dir = tempfile::tempdir().unwrap();
        let form = RunForm {
            image: "busybox-gui:1".into(),
            name: "web".into(),
            ports: "18081:80, 127.0.0.1:18082:81/udp".into(),
            volumes: format!("{}:/www:ro\ncache:/cache", dir.path().display()),
            env: "GREETING=hello world\n".into(),
            command: "httpd -f -p 80".into(),
        };
        let spec = form.parse(true).unwrap();
        let body = serde_json::to_value(spec.create_body()).unwrap();
        assert_eq!(body["Image"], "busybox-gui:1");
        assert_eq!(body["Env"], serde_json::json!(["GREETING=hello world"]));
        assert_eq!(body["Cmd"], serde_json::json!(["httpd", "-f", "-p", "80"]));
        assert!(body["ExposedPorts"]["80/tcp"].is_object());
        assert_eq!(
            body["HostConfig"]["PortBindings"]["81/udp"],
            serde_json::json!([{ "HostIp": "127.0.0.1", "HostPort": "18082" }])
        );
        assert_eq!(
            body["HostConfig"]["Binds"],
            serde_json::json!([format!("{}:/www:ro", dir.path().display()), "cache:/cache"])
        );

        let missing = RunForm {
            volumes: "/no/such/folder:/www".into(),
            ..form.clone()
        };
        let err = missing.parse(true).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Invalid);
        assert!(
            err.message.contains("/no/such/folder does not exist"),
            "{}",
            err.message
        );
        // On an ssh machine, folders are the remote host's: not checked here.
        assert!(missing.parse(false).is_ok());
        let err = RunForm {
            ports: "99999:80".into(),
            ..form.clone()
        }
        .parse(true)
        .unwrap_err();
        assert!(err.message.contains("99999"), "{}", err.message);
        assert!(RunForm::default()
            .parse(true)
            .unwrap_err()
            .message
            .contains("no image"));
    }
}
