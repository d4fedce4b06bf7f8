#!/usr/bin/env bash
# Builds rmachine's Linux packages for amd64 into target/packages/:
#   rmachine_VERSION-1_amd64.deb            cargo-deb; `apt-get install ./rmachine_*.deb`
#   rmachine-VERSION-linux-amd64.tar.xz     other distributions: unpack, `sudo ./install.sh`
#                                           (.tar.zst, or .tar.gz without zstd, with --fast)
# Both carry rmachine, rmachine-vmm and rmachine-desktop (with its desktop entry and
# icons), the guest image, and Debian trixie's virtiofsd and passt with their own C
# library (bookworm has no Rust virtiofsd, and its passt lacks --map-host-loopback).
#
#   installers/linux/package.sh                         # release build (what users get)
#   installers/linux/package.sh --bin-dir target/debug  # binaries built already (CI: its debug build)
#   installers/linux/package.sh --image VERSION         # default: this user's newest amd64 image
#   installers/linux/package.sh --fast                  # fast compression, bigger files (CI)
#   installers/linux/package.sh --no-tarball            # the .deb only
#   installers/linux/package.sh --revision N            # the .deb's revision (default 1: VERSION-1)
#
# Needs cargo-deb (installed with `cargo install --locked cargo-deb` when missing), the
# guest image (`rmachine image build`) and the host tools (`rmachine setup`): both are
# what installers/linux/setup.sh makes. Nothing is built or downloaded for them here.
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD

bin_dir=
image=
fast=0
tarball=1
revision=1
while [ $# -gt 0 ]; do
  case "$1" in
    --release) bin_dir=; shift ;;
    --bin-dir) bin_dir=${2:?--bin-dir needs a folder}; shift 2 ;;
    --image) image=${2:?--image needs a version}; shift 2 ;;
    --fast) fast=1; shift ;;
    --no-tarball) tarball=0; shift ;;
    --revision) revision=${2:?--revision needs a number}; shift 2 ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "package.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

die() { echo "package.sh: $*" >&2; exit 1; }
# Each step says how long the script has run.
step() { printf '\n== %s (at %d s)\n' "$*" "$SECONDS"; }

[ "$(uname -m)" = x86_64 ] || die "only amd64 packages are made so far (this host is $(uname -m))"
version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' Cargo.toml)
[ -n "$version" ] || die "no version in Cargo.toml's [workspace.package]"
target_dir=${CARGO_TARGET_DIR:-$repo/target}
# The .deb's assets (machine-cli/rmachine/Cargo.toml) name this folder.
out=$repo/target/packages
stage=$out/stage

if ! cargo deb --version >/dev/null 2>&1; then
  step "installing cargo-deb (cargo install --locked cargo-deb: a one-time compile of a few minutes)"
  cargo install --locked cargo-deb
fi

binaries=(rmachine rmachine-vmm rmachine-desktop)
if [ -z "$bin_dir" ]; then
  step "building ${binaries[*]} (release)"
  cargo build --release -p rmachine -p rmachine-vmm
  cargo build --release -p rmachine-desktop --features custom-protocol
  bin_dir=$target_dir/release
fi
for b in "${binaries[@]}"; do
  [ -x "$bin_dir/$b" ] || die "$bin_dir/$b is missing (cargo build -p $b)"
done

step "staging the files in $stage"
rm -rf "$stage"
mkdir -p "$stage/bin" "$stage/lib/rmachine/images" "$stage/lib/rmachine/host-tools"
for b in "${binaries[@]}"; do
  # Debug info out (a debug build's line tables); symbols stay, for backtraces, as in
  # the release profile (strip = "debuginfo").
  if command -v strip >/dev/null; then
    strip --strip-debug -o "$stage/bin/$b" "$bin_dir/$b"
  else
    cp "$bin_dir/$b" "$stage/bin/$b"
  fi
  chmod 755 "$stage/bin/$b"
done
rmachine=$stage/bin/rmachine
first_line=$("$rmachine" version | sed -n 1p)
[ "$first_line" = "rmachine $version" ] || die "$bin_dir/rmachine is not version $version: $first_line"

# The image: this user's (the system's are left out, so a package is never made from
# another package's files).
listing=$(RMACHINE_SYSTEM_DIR='' "$rmachine" image ls)
user_images=$(sed -n 's/^user images: *//p' <<<"$listing")
if [ -z "$image" ]; then
  # VERSION ARCH KERNEL ROOTFS PROTOCOL SOURCE …: the newest amd64 image of this
  # rmachine's protocol (another's is marked "(!)").
  image=$(awk 'NR > 1 && $2 == "amd64" && $6 == "user" && $5 !~ /!/ { print $1; exit }' <<<"$listing")
  [ -n "$image" ] || die "no amd64 guest image in $user_images: build it with \`rmachine image build\` (installers/linux/setup.sh does)"
fi
src=$user_images/$image
[ -f "$src/manifest.json" ] || die "no image $image in $user_images (see \`rmachine image ls\`)"
grep -q '"arch": "amd64"' "$src/manifest.json" || die "image $image is not an amd64 image"
# Each file against the manifest's sha256 ("file", then "sha256", in each artifact).
sums=$(sed -n -e 's/^ *"file": "\(.*\)",$/\1/p' -e 's/^ *"sha256": "\(.*\)",$/\1/p' "$src/manifest.json" \
  | paste - - | awk '{ print $2 "  " $1 }')
[ "$(wc -l <<<"$sums")" = 2 ] || die "cannot read the checksums in $src/manifest.json"
(cd "$src" && sha256sum --quiet -c <<<"$sums") || die "image $image in $src is damaged: rebuild it (rmachine image rm $image; rmachine image build)"
mkdir "$stage/lib/rmachine/images/$image"
for f in $(awk '{ print $2 }' <<<"$sums") manifest.json; do
  # A hard link where the folders share a file system (the image is ~250 MB).
  ln "$src/$f" "$stage/lib/rmachine/images/$image/$f" 2>/dev/null || cp "$src/$f" "$stage/lib/rmachine/images/$image/$f"
done
echo "image $image"

# The host tools, as `rmachine setup` unpacked them, without what they never use.
tools=${RMACHINE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/rmachine}/host-tools
for tool in virtiofsd passt; do
  [ -f "$tools/$tool/.complete" ] || die "$tools/$tool is missing: run \`rmachine setup\` (it unpacks trixie's virtiofsd and passt)"
  dest=$stage/lib/rmachine/host-tools/$tool
  cp -a "$tools/$tool" "$dest"
  # Symbolic links become what they point to (the loader's usr/lib64 link included);
  # dangling ones (a doc folder of another package) go.
  find "$dest" -type l | while IFS= read -r link; do
    if [ -e "$link" ]; then
      target=$(readlink -f "$link")
      rm "$link"
      cp -r --preserve=mode "$target" "$link"
    else
      rm "$link"
    fi
  done
  # Character set modules, manuals, the AppArmor profiles and ld.so.conf (not read from
  # here), QEMU's discovery file, changelogs (the copyright files stay), and passt's
  # other programs (only passt runs; its .avx2 build cannot be re-executed through the
  # loader).
  rm -rf "$dest/usr/lib/x86_64-linux-gnu/gconv" "$dest/usr/share/man" "$dest/usr/share/lintian" \
    "$dest/usr/share/qemu" "$dest/usr/lib/qemu" "$dest/etc" \
    "$dest"/usr/bin/{pasta,pasta.avx2,passt.avx2,passt-repair,qrap}
  find "$dest/usr/share/doc" -type f ! -name copyright -delete
  find "$dest" -depth -type d -empty -delete
  binary=
  for candidate in "$dest/usr/bin/$tool" "$dest/usr/libexec/$tool"; do
    [ -f "$candidate" ] && binary=$candidate
  done
  [ -n "$binary" ] || die "no $tool binary in $tools/$tool"
  # (passt says on stderr that it cannot re-execute its AVX2 build: expected.)
  if ! said=$("$dest/usr/lib64/ld-linux-x86-64.so.2" --library-path "$dest/usr/lib/x86_64-linux-gnu" "$binary" --version 2>&1); then
    die "$tool does not run from the staged bundle: $said"
  fi
  echo "$tool $(cat "$dest/.complete")"
done

install -D -m 644 installers/linux/rmachine-desktop.desktop "$stage/share/applications/rmachine-desktop.desktop"
for size in 32x32 128x128 256x256; do
  icon=desktop/src-tauri/icons/$size.png
  [ "$size" = 256x256 ] && icon=desktop/src-tauri/icons/icon.png
  install -D -m 644 "$icon" "$stage/share/icons/hicolor/$size/apps/rmachine-desktop.png"
done
if command -v desktop-file-validate >/dev/null; then
  desktop-file-validate "$stage/share/applications/rmachine-desktop.desktop"
fi

# The .deb's Depends is written out (see machine-cli/rmachine/Cargo.toml): every package
# whose libraries the binaries link must be in it.
if command -v dpkg-shlibdeps >/dev/null; then
  scratch=$(mktemp -d)
  mkdir "$scratch/debian"
  touch "$scratch/debian/control"
  needed=$(cd "$scratch" && dpkg-shlibdeps -O "${binaries[@]/#/$stage/bin/}" 2>/dev/null | sed -n 's/^shlibs:Depends=//p')
  rm -rf "$scratch"
  declared=$(sed -n 's/^depends = "\(.*\)"$/\1/p' machine-cli/rmachine/Cargo.toml)
  for pkg in $(tr ',' '\n' <<<"$needed" | awk '{ print $1 }'); do
    grep -qE "(^|, )$pkg( |,|$)" <<<"$declared" \
      || die "the binaries link a library of $pkg, which the .deb's depends (machine-cli/rmachine/Cargo.toml) lacks"
  done
fi

rm -f "$out"/rmachine_*.deb "$out"/rmachine-*-linux-amd64.tar.*
step "the .deb (cargo-deb$([ "$fast" = 1 ] && echo ', gzip -1'))"
deb_args=(--no-build --no-strip --no-dbgsym --deb-revision "$revision" -p rmachine -o "$out/")
# Fast: the system's `gzip -1` (cargo-deb's own gzip is zopfli unless built with its gzip
# feature, and takes minutes on the image); else cargo-deb's multithreaded xz -6.
[ "$fast" = 1 ] && deb_args+=(--compress-system --compress-type gz --fast)
# (Its warning that the staged assets "will not be built" is what is meant.)
cargo deb "${deb_args[@]}" 2> >(grep -v "^warning: Only source paths starting with exactly 'target/release/'" >&2)

if [ "$tarball" = 1 ]; then
  name=rmachine-$version-linux-amd64
  if [ "$fast" = 1 ] && command -v zstd >/dev/null; then
    archive=$out/$name.tar.zst
    compress=(zstd -q -T0 -1)
  elif [ "$fast" = 1 ]; then
    archive=$out/$name.tar.gz
    compress=(gzip -1)
  else
    archive=$out/$name.tar.xz
    compress=(xz -T0 -6)
  fi
  step "the tarball $(basename "$archive")"
  tar --owner=0 --group=0 --sort=name --transform "s|^|$name/|" \
    -cf - -C "$stage" bin lib share -C "$repo/installers/linux" install.sh \
    | "${compress[@]}" > "$archive"
fi

rm -rf "$stage"
step "made"
ls -l "$out"/rmachine_*.deb "$out"/rmachine-*-linux-amd64.tar.* 2>/dev/null
