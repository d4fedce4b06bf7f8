#!/bin/sh
# Installs rmachine from this unpacked tarball into a prefix, for Linux distributions
# without the .deb; or removes such an install.
#
#   ./install.sh [--prefix DIR]               # default /usr/local (as root; e.g. ~/.local as a user)
#   ./install.sh --uninstall [--prefix DIR]
#
# Puts bin/rmachine, bin/rmachine-vmm, bin/rmachine-desktop, lib/rmachine/ (the guest
# image, and Debian trixie's virtiofsd and passt with their own libraries) and the
# desktop entry and icons under share/ into the prefix, and records every file and
# folder it made in lib/rmachine/installed-files, which --uninstall removes (and nothing
# else: machines live in each user's home and are never touched). It sets nothing up: no
# machine is created and no service is started. A file it did not install is never
# overwritten (for example a `rmachine` link made by installers/linux/setup.sh): it stops
# and names it instead.
set -eu

prefix=/usr/local
uninstall=0
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) prefix=${2:?--prefix needs a folder}; shift 2 ;;
    --prefix=*) prefix=${1#--prefix=}; shift ;;
    --uninstall) uninstall=1; shift ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$prefix" in
  /*) ;;
  *) prefix="$(pwd)/$prefix" ;;
esac
here=$(cd "$(dirname "$0")" && pwd)
record="$prefix/lib/rmachine/installed-files"

if [ "$uninstall" = 1 ]; then
  [ -f "$record" ] || { echo "install.sh: no rmachine install in $prefix ($record is missing)" >&2; exit 1; }
  # Files first (the records last), then the folders this install made, deepest first,
  # when empty.
  dirs=$(grep '^d ' "$record.dirs" 2>/dev/null | cut -c3- | sort -r || true)
  grep '^f ' "$record" | cut -c3- | while IFS= read -r rel; do
    rm -f "$prefix/$rel"
  done
  rm -f "$record" "$record.dirs"
  printf '%s\n' "$dirs" | while IFS= read -r rel; do
    [ -n "$rel" ] && rmdir "$prefix/$rel" 2>/dev/null || true
  done
  echo "rmachine removed from $prefix (machines in users' homes are kept)"
  exit 0
fi

[ -x "$here/bin/rmachine" ] || { echo "install.sh: run it from the unpacked rmachine tarball ($here/bin/rmachine is missing)" >&2; exit 1; }

# Refuse to overwrite what another install put there.
owned() { [ -f "$record" ] && grep -qxF "f $1" "$record"; }
conflicts=
for rel in $(cd "$here" && find bin lib share \( -type f -o -type l \) | sort); do
  target="$prefix/$rel"
  if { [ -e "$target" ] || [ -L "$target" ]; } && ! owned "$rel"; then
    conflicts="$conflicts $target"
  fi
done
if [ -n "$conflicts" ]; then
  echo "install.sh: these files exist and were not installed by this script; move them away first:" >&2
  for c in $conflicts; do echo "  $c" >&2; done
  exit 1
fi

# A reinstall or upgrade: the previous install's files go first (an older image too).
if [ -f "$record" ]; then
  "$0" --uninstall --prefix "$prefix" >/dev/null
fi

new_files=$(mktemp)
new_dirs=$(mktemp)
trap 'rm -f "$new_files" "$new_dirs"' EXIT
(cd "$here" && find bin lib share -type d | sort) | while IFS= read -r rel; do
  if [ ! -d "$prefix/$rel" ]; then
    mkdir -p "$prefix/$rel"
    echo "d $rel" >> "$new_dirs"
  fi
done
(cd "$here" && find bin lib share \( -type f -o -type l \) | sort) | while IFS= read -r rel; do
  cp -P -p "$here/$rel" "$prefix/$rel"
  echo "f $rel" >> "$new_files"
done
cp "$new_files" "$record"
cp "$new_dirs" "$record.dirs"

echo "rmachine installed in $prefix: $prefix/bin/rmachine"
case ":$PATH:" in
  *":$prefix/bin:"*) ;;
  *) echo "note: $prefix/bin is not on PATH" ;;
esac
# What the machines need from the system, said rather than installed.
if ! command -v qemu-system-x86_64 >/dev/null 2>&1; then
  echo "note: qemu-system-x86_64 is missing: machines on hosts without hardware KVM (and arm64 machines: qemu-system-aarch64) run under QEMU; install your distribution's QEMU package"
fi
missing=$(ldd "$prefix/bin/rmachine-desktop" 2>/dev/null | awk '/not found/ {print $1}' | tr '\n' ' ')
if [ -n "$missing" ]; then
  echo "note: rmachine-desktop needs libraries this system lacks: $missing(WebKitGTK 4.1, GTK 3); the CLI works without them"
fi
if ! command -v docker >/dev/null 2>&1; then
  echo "note: no docker CLI: \`rmachine setup\` installs one, with the compose and buildx plugins"
fi
echo "next: rmachine start    (creates and starts the default machine, as your user)"
