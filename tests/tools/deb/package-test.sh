#!/usr/bin/env bash
# The Linux packages as a user would install them, on this Debian machine, as root.
#
# The .deb: `apt-get install ./rmachine_*.deb` resolves its dependencies from Debian and
# runs nothing of ours (no maintainer scripts, no service); the packaged rmachine,
# rmachine-vmm and rmachine-desktop run with a bare environment (PATH=/usr/bin:/bin, an
# empty home: no compiler, no cargo, no user images or host tools to lean on) and their
# libraries all resolve; `rmachine version` names the packaged vmm, virtiofsd, passt and
# image, `rmachine image ls` lists the image as a system image and `image rm` refuses
# it; `dpkg -L` holds what it should and nothing outside the package's paths, `dpkg
# --verify` finds every file intact; then `apt-get remove` leaves nothing in those
# paths, keeps a user's machine data, and setup.sh's /usr/local/bin/rmachine link is as
# it was. The tarball: install.sh into a scratch prefix refuses to overwrite a file it
# did not install, installs, the same binaries find the prefix's image and host tools,
# and --uninstall leaves the prefix empty. Each check names what it found when it fails.
#
#   tests/tools/deb/package-test.sh DEB [TARBALL] [--boot] [--upgrade-from OLD.deb]
#
# --boot also starts a machine from the packaged image with the packaged binaries and
# host tools (the qemu driver; about 25 s here under software emulation) and removes it.
# --upgrade-from installs OLD.deb first (a package with another image), boots a machine
# from it and writes a file on its data disk, and makes a second machine pinned to the
# old image; after the upgrade to DEB the old image is gone, the first machine boots the
# new one with its file kept, and the pinned one is refused saying what to do. (Two more
# boots: not a part of CI.) Whatever happens, the package is removed at the end.
set -euo pipefail

deb=
tarball=
boot=0
old_deb=
while [ $# -gt 0 ]; do
  case "$1" in
    --boot) boot=1 ;;
    --upgrade-from) old_deb=$(realpath "${2:?--upgrade-from needs a .deb}"); shift ;;
    -h|--help) sed -n '2,26p' "$0"; exit 0 ;;
    *.deb) deb=$(realpath "$1") ;;
    *.tar.*) tarball=$(realpath "$1") ;;
    *) echo "package-test: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
[ -f "$deb" ] || { echo "usage: package-test.sh DEB [TARBALL] [--boot]" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "package-test: needs root (it installs the package)" >&2; exit 2; }
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$here/../../.."
version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' Cargo.toml)

fail() { echo "package-test: FAILED: $*" >&2; exit 1; }
step() { printf -- '-- %s (at %d s)\n' "$*" "$SECONDS"; }
# The package's paths: all it may install, and what must be gone after removal.
paths=(/usr/bin/rmachine /usr/bin/rmachine-vmm /usr/bin/rmachine-desktop /usr/lib/rmachine
  /usr/share/applications/rmachine-desktop.desktop /usr/share/doc/rmachine
  /usr/share/icons/hicolor/{32x32,128x128,256x256}/apps/rmachine-desktop.png)
present() { for p in "${paths[@]}"; do if [ -e "$p" ] || [ -L "$p" ]; then echo "$p"; fi; done; }
# installed, config-files, not-installed, …
pkg_status() { dpkg-query -W -f='${db:Status-Status}' rmachine 2>/dev/null || echo not-installed; }

scratch=$(mktemp -d /tmp/rmachine-package-test.XXXXXX)
cleanup() {
  if [ -x /usr/bin/rmachine ]; then
    for machine in default upgraded pinned; do
      as_user /usr/bin/rmachine rm -f "$machine" >/dev/null 2>&1 || true
    done
  fi
  if [ "$(pkg_status)" != not-installed ]; then
    echo "-- removing the package left by a failed check"
    DEBIAN_FRONTEND=noninteractive apt-get remove -y -qq rmachine >/dev/null 2>&1 || true
  fi
  rm -rf "$scratch"
}
trap cleanup EXIT
# A user with nothing of their own: an empty home, no cargo or compiler on PATH.
home=$scratch/home
mkdir -p "$home"
as_user() { env -i HOME="$home" PATH=/usr/bin:/bin LANG=C.UTF-8 "$@"; }

step "before: nothing in the package's paths"
[ "$(pkg_status)" = not-installed ] || fail "rmachine is installed already ($(pkg_status)): apt-get remove rmachine first"
left=$(present)
[ -z "$left" ] || fail "files exist where the package installs: $left"
local_link=$(readlink /usr/local/bin/rmachine 2>/dev/null || echo none)
user_data=$(find "$HOME/.local/share/rmachine" "$HOME/.cache/rmachine" -maxdepth 2 2>/dev/null | sort | md5sum)
# A user's machine, which removing the package must keep.
mkdir -p "$home/.local/share/rmachine/machines/kept"
echo disk > "$home/.local/share/rmachine/machines/kept/data.img"

step "the package runs nothing at install and needs no compiler"
scripts=$(dpkg-deb --ctrl-tarfile "$deb" | tar -t | grep -v -x -E '\./|\./control|\./md5sums' || true)
[ -z "$scripts" ] || fail "the package has maintainer scripts or triggers: $scripts"
# Package names alone (versions and alternatives split off).
depends=$(dpkg-deb -f "$deb" Depends Recommends | sed 's/^[A-Za-z]*: //' | tr ',|' '\n\n' | awk '{ print $1 }')
tools=$(grep -E -x 'gcc(-[0-9]+)?|g\+\+(-[0-9]+)?|clang.*|cargo|rustc|rustup|build-essential|.*-dev' <<<"$depends" || true)
[ -z "$tools" ] || fail "the package depends on build tools: $tools"
image=$(dpkg-deb -c "$deb" | sed -n 's|.*\./usr/lib/rmachine/images/\([^/]*\)/manifest.json$|\1|p')
[ -n "$image" ] || fail "no image in the package: $(dpkg-deb -c "$deb" | grep -c .) entries"
echo "   image $image, $(du -m "$deb" | cut -f1) MiB"

if [ -n "$old_deb" ]; then
  old_image=$(dpkg-deb -c "$old_deb" | sed -n 's|.*\./usr/lib/rmachine/images/\([^/]*\)/manifest.json$|\1|p')
  [ -n "$old_image" ] && [ "$old_image" != "$image" ] || fail "$old_deb must carry another image than $image (it has: ${old_image:-none})"
  step "the older package: apt-get install $(basename "$old_deb") (image $old_image)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$old_deb" >"$scratch/apt.log" 2>&1 \
    || fail "apt-get install $old_deb: $(tail -5 "$scratch/apt.log")"
  as_user /usr/bin/rmachine create upgraded --driver qemu >/dev/null || fail "rmachine create upgraded"
  out=$(as_user /usr/bin/rmachine start upgraded 2>&1) || fail "rmachine start upgraded: $(tail -5 <<<"$out")"
  as_user /usr/bin/rmachine shell upgraded -T -- sh -c 'echo kept > /var/lib/docker/upgrade-marker' \
    || fail "writing on the data disk"
  as_user /usr/bin/rmachine stop upgraded >/dev/null || fail "rmachine stop upgraded"
  as_user /usr/bin/rmachine create pinned --driver qemu --image "$old_image" >/dev/null || fail "rmachine create pinned"
fi

step "apt-get install ./$(basename "$deb")"
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$deb" >"$scratch/apt.log" 2>&1 \
  || fail "apt-get install: $(tail -5 "$scratch/apt.log")"
deb_version=$(dpkg-deb -f "$deb" Version)
[ "${deb_version%-*}" = "$version" ] || fail "the package's version $deb_version is not the workspace's $version"
[ "$(dpkg-query -W -f='${Version}' rmachine)" = "$deb_version" ] || fail "installed version: $(dpkg-query -W -f='${Version}' rmachine)"

step "dpkg -L and dpkg --verify"
listed=$(dpkg -L rmachine)
for f in /usr/bin/rmachine /usr/bin/rmachine-vmm /usr/bin/rmachine-desktop \
  /usr/lib/rmachine/images/"$image"/{bzImage,rootfs.erofs,manifest.json} \
  /usr/lib/rmachine/host-tools/virtiofsd/{.complete,usr/libexec/virtiofsd} \
  /usr/lib/rmachine/host-tools/passt/{.complete,usr/bin/passt} \
  /usr/share/applications/rmachine-desktop.desktop /usr/share/doc/rmachine/copyright \
  /usr/share/icons/hicolor/{32x32,128x128,256x256}/apps/rmachine-desktop.png; do
  grep -qxF "$f" <<<"$listed" || fail "dpkg -L rmachine lacks $f"
done
outside=$(grep -v -E '^/\.$|^/usr$|^/usr/(bin|lib|share)$|^/usr/share/(applications|doc|icons)$|^/usr/share/icons/hicolor(/[0-9x]+(/apps)?)?$' <<<"$listed" \
  | grep -v -E '^/usr/bin/rmachine(-vmm|-desktop)?$|^/usr/lib/rmachine(/|$)|^/usr/share/applications/rmachine-desktop\.desktop$|^/usr/share/doc/rmachine(/|$)|/apps/rmachine-desktop\.png$' || true)
[ -z "$outside" ] || fail "the package installs outside its paths: $outside"
echo "   $(grep -c . <<<"$listed") paths"
# (cargo-deb ships no md5sums; dpkg computes them as it unpacks.)
[ -s /var/lib/dpkg/info/rmachine.md5sums ] || fail "dpkg holds no checksums of the package's files to verify"
bad=$(dpkg --verify rmachine 2>&1 || true)
[ -z "$bad" ] || fail "dpkg --verify rmachine: $bad"
[ "$(readlink /usr/local/bin/rmachine 2>/dev/null || echo none)" = "$local_link" ] \
  || fail "/usr/local/bin/rmachine changed: $(readlink /usr/local/bin/rmachine)"
[ "$(find "$HOME/.local/share/rmachine" "$HOME/.cache/rmachine" -maxdepth 2 2>/dev/null | sort | md5sum)" = "$user_data" ] \
  || fail "installing changed root's rmachine folders"

step "the binaries' libraries all resolve"
for b in rmachine rmachine-vmm rmachine-desktop; do
  missing=$(ldd "/usr/bin/$b" | grep 'not found' || true)
  [ -z "$missing" ] || fail "/usr/bin/$b: $missing"
done

step "rmachine version (a bare environment: PATH=/usr/bin:/bin, an empty home)"
out=$(as_user /usr/bin/rmachine version 2>&1) || fail "rmachine version: $out"
sed 's/^/   /' <<<"$out"
for want in "rmachine $version" "rmachine-vmm $version (/usr/bin/rmachine-vmm)" \
  "virtiofsd /usr/lib/rmachine/host-tools/virtiofsd/usr/libexec/virtiofsd" \
  "passt /usr/lib/rmachine/host-tools/passt/usr/bin/passt" \
  "image $image (amd64, system) /usr/lib/rmachine/images/$image"; do
  grep -qxF "$want" <<<"$out" || fail "rmachine version lacks the line: $want"
done
grep -q '^warning' <<<"$out" && fail "rmachine version warns: $out"
json=$(as_user /usr/bin/rmachine version --format json) || fail "rmachine version --format json"
grep -q '"source": "system"' <<<"$json" || fail "version --format json has no system image: $json"

step "rmachine image ls: the packaged image is a system image"
out=$(as_user /usr/bin/rmachine image ls 2>&1) || fail "rmachine image ls: $out"
sed 's/^/   /' <<<"$out"
awk -v img="$image" '$1 == img && $2 == "amd64" && $5 == 1 && $6 == "system" { found = 1 } END { exit !found }' <<<"$out" \
  || fail "image ls does not list $image as an amd64 system image"
grep -qxF "system images: /usr/lib/rmachine/images (read-only)" <<<"$out" || fail "image ls does not name the system folder"
out=$(as_user /usr/bin/rmachine image rm "$image" 2>&1) && fail "image rm of the system image succeeded: $out"
grep -q "system image" <<<"$out" || fail "image rm of the system image said: $out"
[ -f "/usr/lib/rmachine/images/$image/rootfs.erofs" ] || fail "image rm deleted the system image"

step "the packaged host tools and the desktop app start"
for tool in virtiofsd/usr/libexec/virtiofsd passt/usr/bin/passt; do
  dir=/usr/lib/rmachine/host-tools/${tool%%/*}
  as_user "$dir/usr/lib64/ld-linux-x86-64.so.2" --library-path "$dir/usr/lib/x86_64-linux-gnu" \
    "/usr/lib/rmachine/host-tools/$tool" --version >/dev/null 2>&1 || fail "$tool does not run"
done
if command -v xvfb-run >/dev/null; then
  # Still running after 5 s (the window is up; the window test checks the rest).
  rc=0
  as_user timeout 5 xvfb-run -a /usr/bin/rmachine-desktop >"$scratch/desktop.log" 2>&1 || rc=$?
  [ "$rc" = 124 ] || fail "rmachine-desktop exited with $rc within 5 s: $(tail -5 "$scratch/desktop.log")"
else
  echo "   (no xvfb-run: the desktop app is not started)"
fi

if [ "$boot" = 1 ]; then
  step "rmachine start from the packaged image (qemu driver)"
  as_user /usr/bin/rmachine create default --driver qemu >/dev/null || fail "rmachine create"
  out=$(as_user /usr/bin/rmachine start 2>&1) || fail "rmachine start: $(tail -5 <<<"$out")"
  out=$(as_user /usr/bin/rmachine inspect 2>&1)
  grep -q "$image" <<<"$out" || fail "the machine did not boot $image: $out"
  as_user /usr/bin/rmachine rm -f default >/dev/null || fail "rmachine rm"
fi

if [ -n "$old_deb" ]; then
  step "after the upgrade: the old image is gone, the machines are kept"
  [ ! -e "/usr/lib/rmachine/images/$old_image" ] || fail "the old image $old_image is left after the upgrade"
  out=$(as_user /usr/bin/rmachine start upgraded 2>&1) || fail "rmachine start upgraded after the upgrade: $(tail -5 <<<"$out")"
  grep -q "$image" <<<"$(as_user /usr/bin/rmachine inspect upgraded)" || fail "the upgraded machine did not boot $image"
  kept=$(as_user /usr/bin/rmachine shell upgraded -T -- cat /var/lib/docker/upgrade-marker 2>&1) || true
  [ "$kept" = kept ] || fail "the data disk's file after the upgrade: $kept"
  as_user /usr/bin/rmachine rm -f upgraded >/dev/null || fail "rmachine rm upgraded"
  out=$(as_user /usr/bin/rmachine start pinned 2>&1) && fail "the machine pinned to the removed image started: $out"
  grep -q "image $old_image is not installed" <<<"$out" && grep -q "image newest" <<<"$out" \
    || fail "starting the pinned machine said: $out"
  echo "   pinned: $(grep -o "image $old_image is not installed.*" <<<"$out" | head -1)"
  as_user /usr/bin/rmachine rm -f pinned >/dev/null || fail "rmachine rm pinned"
fi

step "apt-get remove rmachine"
DEBIAN_FRONTEND=noninteractive apt-get remove -y -qq rmachine >"$scratch/apt.log" 2>&1 \
  || fail "apt-get remove: $(tail -5 "$scratch/apt.log")"
[ "$(pkg_status)" = not-installed ] || fail "after apt-get remove the package is $(pkg_status)"
left=$(present)
[ -z "$left" ] || fail "left after apt-get remove: $left"
[ -f "$home/.local/share/rmachine/machines/kept/data.img" ] || fail "a user's machine data is gone"
[ "$(readlink /usr/local/bin/rmachine 2>/dev/null || echo none)" = "$local_link" ] \
  || fail "/usr/local/bin/rmachine changed: $(readlink /usr/local/bin/rmachine)"

if [ -n "$tarball" ]; then
  step "the tarball: install.sh into a scratch prefix"
  tar -xf "$tarball" -C "$scratch"
  unpacked=$(find "$scratch" -maxdepth 1 -name 'rmachine-*-linux-amd64' -type d)
  [ -x "$unpacked/install.sh" ] || fail "no install.sh in $(basename "$tarball")"
  # A file it did not install (setup.sh's link, say) is refused, named, and kept.
  mkdir -p "$scratch/taken/bin"
  ln -s /nonexistent/rmachine "$scratch/taken/bin/rmachine"
  out=$("$unpacked/install.sh" --prefix "$scratch/taken" 2>&1) && fail "install.sh overwrote a foreign file: $out"
  grep -qF "$scratch/taken/bin/rmachine" <<<"$out" || fail "install.sh's refusal does not name the file: $out"
  [ "$(readlink "$scratch/taken/bin/rmachine")" = /nonexistent/rmachine ] || fail "install.sh changed the foreign file"
  prefix=$scratch/prefix
  mkdir -p "$prefix"
  "$unpacked/install.sh" --prefix "$prefix" >/dev/null || fail "install.sh --prefix $prefix"
  # Again: a reinstall replaces its own files.
  "$unpacked/install.sh" --prefix "$prefix" >/dev/null || fail "install.sh a second time"
  out=$(as_user "$prefix/bin/rmachine" version 2>&1) || fail "$prefix/bin/rmachine version: $out"
  for want in "rmachine-vmm $version ($prefix/bin/rmachine-vmm)" \
    "virtiofsd $prefix/lib/rmachine/host-tools/virtiofsd/usr/libexec/virtiofsd" \
    "image $image (amd64, system) $prefix/lib/rmachine/images/$image"; do
    grep -qxF "$want" <<<"$out" || fail "rmachine version from the tarball lacks: $want (printed: $out)"
  done
  "$unpacked/install.sh" --uninstall --prefix "$prefix" >/dev/null || fail "install.sh --uninstall"
  left=$(find "$prefix" -mindepth 1)
  [ -z "$left" ] || fail "left after install.sh --uninstall: $left"
fi

echo "package-test: ok ($(basename "$deb")${tarball:+ and $(basename "$tarball")}: install, run, remove; nothing left)"
