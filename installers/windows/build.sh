#!/usr/bin/env bash
# Builds the Windows installer, cross-built here: rmachine.exe with mingw-w64, then the
# NSIS script installers/windows/rmachine.nsi. Writes target/packages/rmachine-VERSION-setup.exe.
#
#   installers/windows/build.sh                 # release build of rmachine.exe, then the installer
#   installers/windows/build.sh --exe PATH      # package an rmachine.exe built already (CI: its debug build)
#   installers/windows/build.sh --desktop PATH  # also the desktop app's .exe
#
# Needs: Debian's gcc-mingw-w64-x86-64 and nsis, and `rustup target add x86_64-pc-windows-gnu`.
set -euo pipefail
cd "$(dirname "$0")/../.."

exe=
desktop=
while [ $# -gt 0 ]; do
  case "$1" in
    --exe) exe=${2:?--exe needs a path}; shift 2 ;;
    --desktop) desktop=${2:?--desktop needs a path}; shift 2 ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    *) echo "build.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

for tool in makensis x86_64-w64-mingw32-gcc; do
  if ! command -v "$tool" >/dev/null; then
    echo "build.sh: $tool is missing (Debian: apt-get install nsis gcc-mingw-w64-x86-64)" >&2
    exit 1
  fi
done

version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' Cargo.toml)
[ -n "$version" ] || { echo "build.sh: no version in Cargo.toml's [workspace.package]" >&2; exit 1; }

if [ -z "$exe" ]; then
  echo "== building rmachine.exe (release, x86_64-pc-windows-gnu)"
  cargo build --release --target x86_64-pc-windows-gnu -p rmachine
  exe=target/x86_64-pc-windows-gnu/release/rmachine.exe
fi
[ -f "$exe" ] || { echo "build.sh: $exe does not exist" >&2; exit 1; }
args=(-V2 -DVERSION="$version" -DEXE="$(realpath "$exe")")
if [ -n "$desktop" ]; then
  [ -f "$desktop" ] || { echo "build.sh: $desktop does not exist" >&2; exit 1; }
  args+=(-DDESKTOP_EXE="$(realpath "$desktop")")
fi

mkdir -p target/packages
out="$PWD/target/packages/rmachine-$version-setup.exe"
echo "== makensis → $out"
makensis "${args[@]}" -DOUTFILE="$out" installers/windows/rmachine.nsi
ls -l "$out"
