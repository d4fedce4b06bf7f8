#!/usr/bin/env bash
# Regenerates config-6.12 from x86_64_defconfig + kvm_guest.config + rmachine.fragment.
# Usage: regen-config.sh LINUX_SOURCE_TREE
# Run it after editing rmachine.fragment; it fails if an option of the fragment did not
# take (a dependency is missing), naming the option.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
src=${1:?usage: regen-config.sh LINUX_SOURCE_TREE}
cd "$src"
make -s x86_64_defconfig
{ cat .config kernel/configs/kvm_guest.config
  sed -E 's/^(CONFIG_[A-Z0-9_]+)=n$/# \1 is not set/' "$here/rmachine.fragment"; } > .config.merged
mv .config.merged .config
make -s olddefconfig 2>&1 | grep -v override || true
bad=0
while IFS='=' read -r k v; do
  got=$(grep -E "^$k=" .config | cut -d= -f2- || true)
  [ -n "$got" ] || got=n
  if [ "$got" != "$v" ]; then echo "regen-config: $k wanted $v, got $got" >&2; bad=1; fi
done < <(grep -E '^CONFIG_[A-Z0-9_]+=' "$here/rmachine.fragment")
cp .config "$here/config-6.12"
echo "wrote $here/config-6.12 ($(grep -c '=y' .config) options built in)"
exit $bad
