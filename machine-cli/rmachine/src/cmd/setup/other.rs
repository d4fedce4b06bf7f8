//! `rmachine setup` where there are no Debian packages to take the tools from.

use super::SetupArgs;

pub fn run(_args: SetupArgs) -> anyhow::Result<()> {
    anyhow::bail!(
        "`rmachine setup` installs Debian's docker CLI plugins, virtiofsd and passt on Linux; \
         on this system install the docker CLI with compose and buildx yourself, and QEMU for the qemu driver"
    )
}
