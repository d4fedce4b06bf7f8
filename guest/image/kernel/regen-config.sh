#!/usr/bin/env bash
# Regenerates the guest kernel config of one architecture:
#   amd64: x86_64_defconfig + kvm_guest.config + rmachine.fragment + amd64.fragment
#          -> config-6.12
#   arm64: arm64 alldefconfig + kvm_guest.config + rmachine.fragment + arm64.fragment
#          -> config-arm64-6.12 (cross: ARCH=arm64 CROSS_COMPILE=aarch64-linux-gnu-)
# Usage: regen-config.sh LINUX_SOURCE_TREE [amd64|arm64]   (default amd64)
# Run it after editing a fragment; it fails if an option of the fragments did not take
# (a dependency is missing), naming the option. A later fragment overrides an earlier
# one. The config is made in a scratch build directory (make O=...), so the source tree
# is not touched; kbuild wants a clean tree for that. A tree with an in-tree amd64 build
# (the image builder's cache) is still used in place for amd64.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
src=$(cd "${1:?usage: regen-config.sh LINUX_SOURCE_TREE [amd64|arm64]}" && pwd)
arch=${2:-amd64}
case "$arch" in
  amd64) make_args=(); defconfig=x86_64_defconfig; out_name=config-6.12 ;;
  arm64)
    make_args=(ARCH=arm64 CROSS_COMPILE="${CROSS_COMPILE:-aarch64-linux-gnu-}")
    defconfig=alldefconfig; out_name=config-arm64-6.12 ;;
  *) echo "regen-config: unknown arch $arch (amd64 or arm64)" >&2; exit 2 ;;
esac
fragments=("$here/rmachine.fragment" "$here/$arch.fragment")

if [ "$arch" = amd64 ] && { [ -e "$src/.config" ] || [ -d "$src/include/config" ]; }; then
  build=$src; cleanup=:
else
  build=$(mktemp -d "${TMPDIR:-/tmp}/regen-config.XXXXXX"); cleanup="rm -rf $build"
  make_args+=(O="$build")
fi
trap '$cleanup' EXIT
cd "$src"
make -s "${make_args[@]}" "$defconfig"
{ cat "$build/.config" kernel/configs/kvm_guest.config
  sed -E 's/^(CONFIG_[A-Z0-9_]+)=n$/# \1 is not set/' "${fragments[@]}"; } > "$build/.config.merged"
mv "$build/.config.merged" "$build/.config"
make -s "${make_args[@]}" olddefconfig 2>&1 | grep -v override || true
bad=0
# The value each option should have: the last fragment that names it wins.
while IFS='=' read -r k v; do
  got=$(grep -E "^$k=" "$build/.config" | cut -d= -f2- || true)
  [ -n "$got" ] || got=n
  if [ "$got" != "$v" ]; then echo "regen-config: $k wanted $v, got $got" >&2; bad=1; fi
done < <(grep -hE '^CONFIG_[A-Z0-9_]+=' "${fragments[@]}" \
  | awk -F= '{ if (!($1 in v)) order[n++] = $1; v[$1] = $0 } END { for (i = 0; i < n; i++) print v[order[i]] }')
cp "$build/.config" "$here/$out_name"
echo "wrote $here/$out_name ($(grep -c '=y' "$build/.config") options built in)"
exit $bad
