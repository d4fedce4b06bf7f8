//! `rmachine env [NAME]`: the exports that point the docker CLI at a machine.

use super::DEFAULT_MACHINE;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Shell {
    Sh,
    Fish,
    Powershell,
}

#[derive(Debug, clap::Args)]
pub struct EnvArgs {
    /// Machine name.
    #[arg(default_value = DEFAULT_MACHINE)]
    pub name: String,
    /// Shell syntax (default: from $SHELL).
    #[arg(long, value_enum)]
    pub shell: Option<Shell>,
    /// Print the commands that undo the exports.
    #[arg(long, short)]
    pub unset: bool,
}

pub fn run(args: EnvArgs) -> anyhow::Result<()> {
    let m = super::load(&args.name)?;
    let endpoints = rmachine_machine::driver::for_machine(&m).endpoints(&m)?;
    let shell = args.shell.unwrap_or_else(|| {
        match std::env::var("SHELL")
            .unwrap_or_default()
            .rsplit('/')
            .next()
        {
            Some("fish") => Shell::Fish,
            Some("pwsh") | Some("powershell") => Shell::Powershell,
            _ => Shell::Sh,
        }
    });
    match &endpoints.engine_tls {
        Some(tls) => print!(
            "{}",
            render_tls(
                shell,
                &tls.docker_host,
                &tls.cert_path.display().to_string(),
                args.unset,
                &args.name
            )
        ),
        None => print!(
            "{}",
            render(shell, &endpoints.docker_host, args.unset, &args.name)
        ),
    }
    Ok(())
}

/// The docker-machine style exports of an ssh machine with `--engine-tls`.
fn render_tls(shell: Shell, host: &str, certs: &str, unset: bool, name: &str) -> String {
    let hint = format!("rmachine env {name}");
    let vars = [
        ("DOCKER_HOST", host),
        ("DOCKER_TLS_VERIFY", "1"),
        ("DOCKER_CERT_PATH", certs),
    ];
    let mut out = String::new();
    for (k, v) in vars {
        out.push_str(&match (shell, unset) {
            (Shell::Sh, false) => format!("export {k}=\"{v}\"\n"),
            (Shell::Sh, true) => format!("unset {k}\n"),
            (Shell::Fish, false) => format!("set -gx {k} \"{v}\";\n"),
            (Shell::Fish, true) => format!("set -e {k};\n"),
            (Shell::Powershell, false) => format!("$Env:{k} = \"{v}\"\n"),
            (Shell::Powershell, true) => format!("Remove-Item Env:\\{k}\n"),
        });
    }
    if !unset {
        out.push_str(&match shell {
            Shell::Sh => format!("unset DOCKER_CONTEXT\n# eval \"$({hint})\"\n"),
            Shell::Fish => format!("set -e DOCKER_CONTEXT;\n# {hint} | source\n"),
            Shell::Powershell => format!("Remove-Item Env:\\DOCKER_CONTEXT -ErrorAction SilentlyContinue\n# & {hint} | Invoke-Expression\n"),
        });
    }
    out
}

fn render(shell: Shell, host: &str, unset: bool, name: &str) -> String {
    let hint = format!("rmachine env {name}");
    match (shell, unset) {
        (Shell::Sh, false) => format!("export DOCKER_HOST=\"{host}\"\nunset DOCKER_CONTEXT\n# eval \"$({hint})\"\n"),
        (Shell::Sh, true) => "unset DOCKER_HOST\n".into(),
        (Shell::Fish, false) => format!("set -gx DOCKER_HOST \"{host}\";\nset -e DOCKER_CONTEXT;\n# {hint} | source\n"),
        (Shell::Fish, true) => "set -e DOCKER_HOST;\n".into(),
        (Shell::Powershell, false) => format!("$Env:DOCKER_HOST = \"{host}\"\nRemove-Item Env:\\DOCKER_CONTEXT -ErrorAction SilentlyContinue\n# & {hint} | Invoke-Expression\n"),
        (Shell::Powershell, true) => "Remove-Item Env:\\DOCKER_HOST\n".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_each_shell_sets_docker_host() {
        let h = "unix:///m/docker.sock";
        assert!(render(Shell::Sh, h, false, "m")
            .contains("export DOCKER_HOST=\"unix:///m/docker.sock\""));
        assert!(render(Shell::Fish, h, false, "m").contains("set -gx DOCKER_HOST"));
        assert!(render(Shell::Powershell, h, false, "m").contains("$Env:DOCKER_HOST = "));
        assert_eq!(render(Shell::Sh, h, true, "m"), "unset DOCKER_HOST\n");
    }

    #[test]
    fn test_tls_machine_exports_docker_machine_variables() {
        let out = render_tls(Shell::Sh, "tcp://box:2376", "/m/certs", false, "m");
        assert!(
            out.contains("export DOCKER_HOST=\"tcp://box:2376\""),
            "{out}"
        );
        assert!(out.contains("export DOCKER_TLS_VERIFY=\"1\""), "{out}");
        assert!(
            out.contains("export DOCKER_CERT_PATH=\"/m/certs\""),
            "{out}"
        );
        let fish = render_tls(Shell::Fish, "tcp://box:2376", "/m/certs", true, "m");
        assert!(fish.contains("set -e DOCKER_TLS_VERIFY;"), "{fish}");
    }
}
