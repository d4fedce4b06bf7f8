#!/usr/bin/env bash
# Cargo's runner for x86_64-pc-windows-gnu (.cargo/config.toml): runs a Windows binary,
# tests included, under wine. Puts the bcryptprimitives.dll shim (see
# bcryptprimitives.c) beside the .exe, and uses a wine prefix of its own under the
# target dir, made once.
set -euo pipefail
exe=$1
shift
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
dir=$(cd "$(dirname "$exe")" && pwd)
wine=$(command -v wine64 || command -v wine || true)
if [ -z "$wine" ]; then
  echo "run.sh: wine is not installed (Debian: apt-get install wine wine64)" >&2
  exit 127
fi
dll="$dir/bcryptprimitives.dll"
if [ ! -f "$dll" ] || [ "$here/bcryptprimitives.c" -nt "$dll" ]; then
  # Under a lock, into a file of this process's own: nextest starts several test
  # binaries at once, and a half-written DLL makes wine fail to start the .exe.
  (
    flock 9
    if [ ! -f "$dll" ] || [ "$here/bcryptprimitives.c" -nt "$dll" ]; then
      x86_64-w64-mingw32-gcc -shared -O2 -o "$dll.$$" "$here/bcryptprimitives.c" -ladvapi32
      mv "$dll.$$" "$dll"
    fi
  ) 9>"$dll.lock"
fi
# target/x86_64-pc-windows-gnu/<profile>/… → target/wine-prefix
prefix_root=$dir
while [ "$(basename "$prefix_root")" != "x86_64-pc-windows-gnu" ] && [ "$prefix_root" != / ]; do
  prefix_root=$(dirname "$prefix_root")
done
[ "$prefix_root" = / ] && prefix_root=$dir
export WINEPREFIX="${WINEPREFIX:-$(dirname "$prefix_root")/wine-prefix}"
export WINEDEBUG="${WINEDEBUG:--all}"
export WINEDLLOVERRIDES="${WINEDLLOVERRIDES:-mscoree,mshtml=}"
if [ ! -f "$WINEPREFIX/system.reg" ]; then
  mkdir -p "$WINEPREFIX"
  # A lock: nextest starts several test binaries at once.
  (
    flock 9
    [ -f "$WINEPREFIX/system.reg" ] || "$wine" wineboot --init >/dev/null 2>&1 || true
  ) 9>"$WINEPREFIX.lock"
fi
exec "$wine" "$exe" "$@"
