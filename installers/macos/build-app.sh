#!/usr/bin/env bash
# Assembles "rmachine Desktop.app" from built macOS binaries:
#   installers/macos/build-app.sh --desktop PATH --cli PATH [--out DIR]
#   installers/macos/build-app.sh --self-test     # assemble from stand-ins and check the layout
# Layout: Contents/Info.plist (from Info.plist.in with the workspace version),
# Contents/MacOS/rmachine-desktop, Contents/Resources/bin/rmachine (the CLI the app offers to link
# into /usr/local/bin, as Docker Desktop does), Contents/Resources/rmachine.icns (made from the
# desktop's PNG icons). Signing (codesign with entitlements.plist, the hypervisor entitlement) and
# notarization need Apple's tools and are not done here: unbuilt and untested on macOS.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
desktop="" cli="" out="$root/target/packages" self_test=0
while [ $# -gt 0 ]; do
  case "$1" in
    --desktop) desktop=$2; shift 2 ;;
    --cli) cli=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --self-test) self_test=1; shift ;;
    -h|--help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "error: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' "$root/Cargo.toml")
[ -n "$version" ] || { echo "error: no version in Cargo.toml's [workspace.package]" >&2; exit 1; }

if [ "$self_test" = 1 ]; then
  scratch=$(mktemp -d)
  trap 'rm -rf "$scratch"' EXIT
  printf '#!/bin/sh\necho desktop\n' > "$scratch/rmachine-desktop"
  printf '#!/bin/sh\necho cli\n' > "$scratch/rmachine"
  desktop="$scratch/rmachine-desktop" cli="$scratch/rmachine" out="$scratch/out"
fi
for f in "$desktop" "$cli"; do
  [ -n "$f" ] && [ -f "$f" ] || { echo "error: --desktop and --cli must name built binaries (see --help)" >&2; exit 2; }
done

app="$out/rmachine Desktop.app"
rm -rf "$app"
mkdir -p "$app/Contents/MacOS" "$app/Contents/Resources/bin"
sed "s/@VERSION@/${version}/g" "$here/Info.plist.in" > "$app/Contents/Info.plist"
install -m 0755 "$desktop" "$app/Contents/MacOS/rmachine-desktop"
install -m 0755 "$cli" "$app/Contents/Resources/bin/rmachine"
printf 'APPL????' > "$app/Contents/PkgInfo"
# icns: the magic, the total length, then one (type, length, PNG) entry per size: ic07 is 128 px,
# ic08 256 px.
python3 - "$root/desktop/src-tauri/icons" "$app/Contents/Resources/rmachine.icns" <<'PY'
import struct, sys
icons, dest = sys.argv[1], sys.argv[2]
entries = b""
for kind, name, size in ((b"ic07", "128x128.png", 128), (b"ic08", "icon.png", 256)):
    png = open(f"{icons}/{name}", "rb").read()
    if png[:8] != b"\x89PNG\r\n\x1a\n" or struct.unpack(">II", png[16:24]) != (size, size):
        sys.exit(f"error: {icons}/{name} is not a {size}x{size} PNG")
    entries += kind + struct.pack(">I", 8 + len(png)) + png
open(dest, "wb").write(b"icns" + struct.pack(">I", 8 + len(entries)) + entries)
PY

# The checks a Mac's tools would make first: the plist parses and names what is there.
python3 - "$app" "$version" <<'PY'
import os, plistlib, struct, sys
app, version = sys.argv[1], sys.argv[2]
info = plistlib.load(open(f"{app}/Contents/Info.plist", "rb"))
problems = []
if info.get("CFBundleShortVersionString") != version:
    problems.append(f"version {info.get('CFBundleShortVersionString')!r}, not {version!r}")
exe = f"{app}/Contents/MacOS/{info.get('CFBundleExecutable')}"
if not os.access(exe, os.X_OK):
    problems.append(f"CFBundleExecutable {exe} is not an executable")
icns = open(f"{app}/Contents/Resources/{info.get('CFBundleIconFile')}", "rb").read()
if icns[:4] != b"icns" or struct.unpack(">I", icns[4:8])[0] != len(icns):
    problems.append("the icon is not a well-formed icns")
if problems:
    sys.exit("error: " + "; ".join(problems))
PY
echo "app: $app (rmachine Desktop $version)"
