//! `rmachine image build` where the builder does not run.

use rmachine_machine::paths::Paths;

use super::BuildArgs;

pub fn run(_paths: &Paths, _args: BuildArgs) -> anyhow::Result<()> {
    anyhow::bail!(
        "building the guest image needs Linux (debootstrap and a kernel build); build it on a Linux machine, or copy an image folder into {}",
        _paths.images_dir().display()
    )
}
