//! Installing the engine on a host that has none: Debian's `docker.io` (and the compose
//! and buildx plugins where the release packages them) through the host's own apt, never
//! a downloaded script. The plan is a pure function of `/etc/os-release`; the script it
//! renders runs as root (`sudo -n` for another user) and prints each step.

use std::time::Duration;

use super::probe::OsRelease;
use super::{Session, SshError};

/// How long the install may take (apt under software emulation is slow).
const INSTALL_TIMEOUT: Duration = Duration::from_secs(1800);

/// What to install on a supported host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstallPlan {
    /// Always installed.
    pub packages: Vec<&'static str>,
    /// Installed when the host's apt knows them ("where packaged").
    pub optional: Vec<&'static str>,
}

/// Why a host gets no install.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{name} ({id}) is not supported: rmachine installs Docker on Debian and Ubuntu only; \
     install Docker there yourself, then create the machine with --install never"
)]
pub struct Unsupported {
    pub name: String,
    pub id: String,
}

/// Debian releases whose `docker-compose` package is the old Python compose v1, which is
/// not the `docker compose` plugin.
const DEBIAN_COMPOSE_V1: [&str; 4] = ["stretch", "buster", "bullseye", "bookworm"];

/// The plan for a host: Debian and Ubuntu are supported, every other system is refused
/// by name.
pub fn plan(os: &OsRelease) -> Result<InstallPlan, Unsupported> {
    let packages = vec!["docker.io", "ca-certificates"];
    let optional = match os.id.as_str() {
        "debian" => {
            let old = os
                .codename
                .as_deref()
                .is_some_and(|c| DEBIAN_COMPOSE_V1.contains(&c));
            // Debian packages the docker CLI on its own (`docker-cli`), for people working
            // on the host itself.
            if old {
                vec!["docker-cli", "docker-buildx"]
            } else {
                vec!["docker-cli", "docker-compose", "docker-buildx"]
            }
        }
        "ubuntu" => vec!["docker-compose-v2", "docker-buildx"],
        _ => {
            return Err(Unsupported {
                name: os.pretty_name.clone(),
                id: if os.id.is_empty() {
                    "no ID in /etc/os-release".into()
                } else {
                    os.id.clone()
                },
            })
        }
    };
    Ok(InstallPlan { packages, optional })
}

/// The install script. `add_user`: a login user (not root) that joins the `docker` group
/// so that the engine's socket is reachable through ssh as it.
pub fn script(plan: &InstallPlan, add_user: Option<&str>) -> String {
    let mut s = String::from(
        "set -e\n\
         export DEBIAN_FRONTEND=noninteractive NEEDRESTART_SUSPEND=1\n\
         echo 'rmachine: apt-get update'\n\
         apt-get update -q\n",
    );
    s.push_str(&format!("pkgs='{}'\n", plan.packages.join(" ")));
    // Debian's kernels enable AppArmor: the engine needs its parser to load its profile.
    s.push_str(
        "if [ \"$(cat /sys/module/apparmor/parameters/enabled 2>/dev/null)\" = Y ]; then pkgs=\"$pkgs apparmor\"; fi\n",
    );
    if !plan.optional.is_empty() {
        s.push_str(&format!(
            "for p in {}; do if apt-cache show \"$p\" >/dev/null 2>&1; then pkgs=\"$pkgs $p\"; fi; done\n",
            plan.optional.join(" ")
        ));
    }
    s.push_str(
        "echo \"rmachine: apt-get install $pkgs\"\n\
         apt-get install -y -q --no-install-recommends -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold $pkgs\n\
         echo \"rmachine: installed $pkgs\"\n\
         systemctl enable --now docker.service\n",
    );
    if let Some(user) = add_user {
        s.push_str(&format!(
            "if ! id -nG '{user}' | tr ' ' '\\n' | grep -qx docker; then usermod -aG docker '{user}'; echo 'rmachine: {user} joined the docker group'; fi\n"
        ));
    }
    s.push_str("systemctl is-active docker.service\n");
    s
}

/// A user name the script may quote: what `useradd` accepts.
pub fn safe_user(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 32
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
        && !name.starts_with('-')
}

/// The command that runs a root script given on stdin: `sh -s`, or `sudo -n sh -s`.
pub fn as_root(root: bool) -> &'static str {
    if root {
        "sh -s"
    } else {
        "sudo -n sh -s"
    }
}

/// Runs the install on the host; returns the packages it installed. `progress` hears the
/// script's steps and apt's lines.
pub async fn run(
    session: &Session,
    plan: &InstallPlan,
    root: bool,
    add_user: Option<&str>,
    progress: &mut (dyn FnMut(&str) + Send),
) -> Result<Vec<String>, SshError> {
    let script = script(plan, add_user.filter(|u| safe_user(u)));
    let mut installed = Vec::new();
    let out = session
        .exec(
            as_root(root),
            Some(script.as_bytes()),
            INSTALL_TIMEOUT,
            &mut |line| {
                if let Some(pkgs) = line.strip_prefix("rmachine: installed ") {
                    installed = pkgs.split_whitespace().map(str::to_string).collect();
                }
                let shown = line.strip_prefix("rmachine: ").unwrap_or(line);
                if line.starts_with("rmachine: ")
                    || line.starts_with("Get:")
                    || line.starts_with("Unpacking")
                    || line.starts_with("Setting up")
                {
                    progress(&format!("installing the engine: {}", shown.trim()));
                }
            },
        )
        .await?;
    if !out.success() {
        return Err(SshError::step(
            "installing docker.io through the host's apt",
            format!(
                "exit status {}: {}",
                out.status.map(|s| s.to_string()).unwrap_or("none".into()),
                out.tail()
            ),
        ));
    }
    Ok(installed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ssh::probe::tests::{FEDORA, NOBLE, TRIXIE};

    #[test]
    fn test_plan_per_release() {
        let trixie = plan(&OsRelease::parse(TRIXIE)).unwrap();
        assert_eq!(trixie.packages, ["docker.io", "ca-certificates"]);
        assert_eq!(
            trixie.optional,
            ["docker-cli", "docker-compose", "docker-buildx"]
        );
        let bookworm = plan(&OsRelease::parse(
            "ID=debian\nVERSION_CODENAME=bookworm\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n",
        ))
        .unwrap();
        assert_eq!(
            bookworm.optional,
            ["docker-cli", "docker-buildx"],
            "compose v1 is not the plugin"
        );
        let sid = plan(&OsRelease::parse(
            "ID=debian\nPRETTY_NAME=\"Debian GNU/Linux trixie/sid\"\n",
        ))
        .unwrap();
        assert!(sid.optional.contains(&"docker-compose"));
        let noble = plan(&OsRelease::parse(NOBLE)).unwrap();
        assert_eq!(noble.optional, ["docker-compose-v2", "docker-buildx"]);
    }

    #[test]
    fn test_other_systems_are_refused_by_name() {
        let err = plan(&OsRelease::parse(FEDORA)).unwrap_err().to_string();
        assert!(
            err.contains("Fedora Linux 40") && err.contains("fedora"),
            "{err}"
        );
        assert!(err.contains("--install never"), "{err}");
        let mint = plan(&OsRelease::parse(
            "ID=linuxmint\nID_LIKE=\"ubuntu debian\"\nPRETTY_NAME=\"Linux Mint 22\"\n",
        ))
        .unwrap_err()
        .to_string();
        assert!(mint.contains("Linux Mint 22"), "{mint}");
        let empty = plan(&OsRelease::parse("")).unwrap_err().to_string();
        assert!(empty.contains("no ID"), "{empty}");
    }

    #[test]
    fn test_script_uses_apt_only_and_adds_the_user() {
        let p = plan(&OsRelease::parse(TRIXIE)).unwrap();
        let s = script(&p, Some("me"));
        assert!(s.contains("apt-get update") && s.contains("apt-get install -y"));
        assert!(s.contains("for p in docker-cli docker-compose docker-buildx"));
        assert!(s.contains("usermod -aG docker 'me'"));
        assert!(!s.contains("curl") && !s.contains("wget") && !s.contains("hostname"));
        assert!(!script(&p, None).contains("usermod"));
        assert!(safe_user("me") && safe_user("a.b-c_d"));
        assert!(!safe_user("x'; rm -rf /") && !safe_user("") && !safe_user("-x"));
        assert_eq!(as_root(false), "sudo -n sh -s");
    }
}
