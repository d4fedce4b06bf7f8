#!/usr/bin/env bash
# The Windows installer under wine, as a user would run it silently: install, the CLI
# runs from Program Files and from PATH, the Start menu and Apps & features entries
# exist; then the silent uninstall removes every file and registry value it added and
# keeps the user's machines. Each check names what it found when it fails.
#
#   tests/tools/wine/installer-test.sh target/packages/rmachine-VERSION-setup.exe
#
# Uses a wine prefix of its own (made fresh each run, under target/), so nothing of an
# earlier run can make a check pass.
set -euo pipefail
setup=$(realpath "${1:?usage: installer-test.sh SETUP.exe}")
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$here/../../.."
wine=$(command -v wine64 || command -v wine || true)
[ -n "$wine" ] || { echo "installer-test: wine is not installed (Debian: apt-get install wine wine64)" >&2; exit 127; }
version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' Cargo.toml)

export WINEPREFIX="$PWD/target/wine-installer-prefix"
export WINEDEBUG=-all
# winemenubuilder would copy the Start menu into this Linux user's desktop menus (and
# record that in the prefix's registry): not the installer's doing, so it is off.
export WINEDLLOVERRIDES="mscoree,mshtml=;winemenubuilder.exe=d"
rm -rf "$WINEPREFIX"
mkdir -p "$WINEPREFIX"
fail() { echo "installer-test: FAILED: $*" >&2; exit 1; }
step() { echo "-- $*"; }
# Waits for every process of the prefix (the uninstaller re-launches itself from %TEMP%).
settle() { wineserver -w; }

step "a fresh wine prefix"
"$wine" wineboot --init >/dev/null 2>&1 || fail "wineboot --init"
settle
# What real Windows has and wine 8 lacks (see bcryptprimitives.c): into system32, so
# the installed .exe runs as it would on Windows, with nothing added beside it.
x86_64-w64-mingw32-gcc -shared -O2 -o "$WINEPREFIX/drive_c/windows/system32/bcryptprimitives.dll" \
  "$here/bcryptprimitives.c" -ladvapi32
drive_c="$WINEPREFIX/drive_c"
before=$(mktemp)
after=$(mktemp)
trap 'rm -f "$before" "$after"' EXIT
(cd "$drive_c" && find . -path './users/*/Temp' -prune -o -path './windows/temp' -prune -o -print | sort) > "$before"

step "silent install"
"$wine" "$setup" /S || fail "setup.exe /S exited $?"
settle
prog="$drive_c/Program Files/rmachine"
for f in rmachine.exe uninstall.exe; do
  [ -f "$prog/$f" ] || fail "Program Files\\rmachine\\$f missing: $(ls "$prog" 2>&1)"
done

step "rmachine.exe version, from Program Files"
out=$("$wine" "C:\\Program Files\\rmachine\\rmachine.exe" version 2>&1) || fail "rmachine.exe version: $out"
echo "$out" | grep -q "rmachine $version" || fail "rmachine.exe version printed: $out"
step "rmachine --help, found through PATH (a new cmd reads the system PATH)"
wineserver -k || true
out=$("$wine" cmd /c "rmachine --help" 2>&1) || fail "cmd /c rmachine --help: $out"
echo "$out" | grep -q "Usage" || fail "rmachine --help through PATH printed: $out"
path_value=$("$wine" reg query 'HKLM\SYSTEM\CurrentControlSet\Control\Session Manager\Environment' /v Path 2>&1)
echo "$path_value" | grep -qi 'C:\\Program Files\\rmachine' || fail "system PATH lacks the install folder: $path_value"

step "Start menu and Apps & features"
menu="$drive_c/ProgramData/Microsoft/Windows/Start Menu/Programs/rmachine"
ls "$menu"/*.lnk >/dev/null 2>&1 || fail "no Start menu shortcuts in $menu"
ls "$menu" | sed 's/^/   /'
key='HKLM\Software\Microsoft\Windows\CurrentVersion\Uninstall\rmachine'
entry=$("$wine" reg query "$key" 2>&1) || fail "no Apps & features entry: $entry"
echo "$entry" | grep -q "$version" || fail "Apps & features entry lacks the version: $entry"

step "a user's machine data (must stay)"
data="$drive_c/users/$(id -un)/AppData/Local/rmachine/machines/default"
mkdir -p "$data"
echo disk > "$data/data.img"

step "silent uninstall"
"$wine" "C:\\Program Files\\rmachine\\uninstall.exe" /S || fail "uninstall.exe /S exited $?"
settle
[ -f "$data/data.img" ] || fail "the uninstaller deleted the user's machine data"
rm -rf "$drive_c/users/$(id -un)/AppData/Local/rmachine"
(cd "$drive_c" && find . -path './users/*/Temp' -prune -o -path './windows/temp' -prune -o -print | sort) > "$after"
left=$(comm -13 "$before" "$after" | grep -i rmachine || true)
[ -z "$left" ] || fail "files left after uninstall: $left"
regs=$(grep -il rmachine "$WINEPREFIX"/*.reg || true)
[ -z "$regs" ] || fail "registry still names rmachine in: $regs ($(grep -i -m3 rmachine "$WINEPREFIX"/*.reg))"
path_value=$("$wine" reg query 'HKLM\SYSTEM\CurrentControlSet\Control\Session Manager\Environment' /v Path 2>&1)
! echo "$path_value" | grep -qi rmachine || fail "system PATH still has the install folder: $path_value"
echo "installer-test: ok ($(basename "$setup"): install, run, uninstall; nothing left)"
