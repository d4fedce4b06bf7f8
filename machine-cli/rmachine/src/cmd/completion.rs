//! `rmachine completion bash|zsh|fish|powershell`: the shell completion script.

#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  \
    rmachine completion bash > /etc/bash_completion.d/rmachine\n  \
    rmachine completion zsh > \"${fpath[1]}/_rmachine\"\n  \
    rmachine completion fish > ~/.config/fish/completions/rmachine.fish\n  \
    rmachine completion powershell | Out-String | Invoke-Expression")]
pub struct CompletionArgs {
    /// The shell.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

pub fn run(args: CompletionArgs, command: &mut clap::Command) -> anyhow::Result<()> {
    let name = command.get_name().to_string();
    clap_complete::generate(args.shell, command, name, &mut std::io::stdout());
    Ok(())
}
