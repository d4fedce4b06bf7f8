#!/usr/bin/env bash
# rmachine setup for a Debian/Ubuntu host: installs what rmachine needs (and
# cargo-nextest, which the README's test command uses), builds the rmachine CLI (release)
# and the guest agent, builds (or reuses) the guest image, installs the docker CLI
# plugins (compose, buildx), and starts the default machine, whose docker context
# becomes current: `docker run` then works.
#
#   installers/linux/setup.sh             # everything
#   installers/linux/setup.sh --no-deps   # skip the apt, rustup and cargo-nextest steps
#   installers/linux/setup.sh --no-start  # do not start the default machine
#   installers/linux/setup.sh --debug     # link the debug build (what the tests build) into PATH
#
# Run as root (or with sudo): the image build uses debootstrap.
set -euo pipefail
cd "$(dirname "$0")/../.."

deps=1
start=1
profile=release
for arg in "$@"; do
  case "$arg" in
    --no-deps) deps=0 ;;
    --no-start) start=0 ;;
    --debug) profile=debug ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "setup.sh: unknown option $arg (see --help)" >&2; exit 2 ;;
  esac
done

step() { printf '\n== %s\n' "$*"; }

if [ "$deps" = 1 ]; then
  step "installing Debian packages"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # QEMU's packages go together: a newer qemu-utils (a backport, as some images carry)
  # breaks the distribution's qemu-system-x86, so apt would refuse both. qemu-utils is
  # moved to the version of the QEMU that is installed here, and says so.
  qemu_version=$(apt-cache policy qemu-system-x86 | awk '/Candidate:/ {print $2}')
  utils_version=$(dpkg-query -W -f='${Version}' qemu-utils 2>/dev/null || true)
  if ! dpkg-query -W -f='${Status}' qemu-system-x86 2>/dev/null | grep -q 'ok installed' \
    && [ -n "$utils_version" ] && [ -n "$qemu_version" ] && [ "$utils_version" != "$qemu_version" ]; then
    echo "qemu-utils ${utils_version} is changed to ${qemu_version}, the version of the distribution's qemu-system-x86 (the two must match)"
    apt-get install -y -qq --no-install-recommends --allow-downgrades "qemu-utils=${qemu_version}" >/dev/null
  fi
  apt-get install -y -qq --no-install-recommends \
    qemu-system-x86 qemu-utils openssh-client openssl debootstrap erofs-utils e2fsprogs busybox-static \
    make gcc libc6-dev bc bison flex libelf-dev libssl-dev cpio xz-utils dpkg-dev \
    debian-archive-keyring ca-certificates tar >/dev/null
  # The desktop app (Tauri: WebKitGTK 4.1), its window test (Xvfb, WebKitWebDriver) and
  # its tray test (a private session bus: dbus-daemon, from the package dbus).
  apt-get install -y -qq --no-install-recommends \
    pkg-config libwebkit2gtk-4.1-dev libsoup-3.0-dev libjavascriptcoregtk-4.1-dev librsvg2-dev \
    libayatana-appindicator3-dev libxdo-dev fonts-dejavu-core xvfb xauth webkit2gtk-driver dbus >/dev/null
  if ! command -v docker >/dev/null; then
    # The host's docker CLI (client only).
    apt-get install -y -qq --no-install-recommends docker.io >/dev/null || apt-get install -y -qq docker-cli >/dev/null
  fi
  step "installing Rust targets"
  rustup target add x86_64-unknown-linux-musl >/dev/null
  if ! command -v cargo-nextest >/dev/null; then
    step "installing cargo-nextest (the test runner of the README's second command)"
    cargo install --locked cargo-nextest
  fi
fi

step "building the guest agent (static, musl)"
cargo build --profile agent --target x86_64-unknown-linux-musl -p rmachine-agent

step "building the rmachine CLI ($profile)"
if [ "$profile" = release ]; then
  cargo build --release -p rmachine
else
  cargo build -p rmachine
fi
rmachine="$PWD/target/$profile/rmachine"

step "building the guest image"
"$rmachine" image build --agent target/x86_64-unknown-linux-musl/agent/rmachine-agent

step "installing the rmachine command"
bindir=/usr/local/bin
[ "$(id -u)" = 0 ] || bindir="$HOME/.local/bin"
mkdir -p "$bindir"
ln -sf "$rmachine" "$bindir/rmachine"
echo "$bindir/rmachine -> $rmachine"

step "docker CLI tools (compose, buildx)"
"$rmachine" setup

if [ "$start" = 1 ]; then
  step "starting the default machine"
  "$rmachine" start
  echo
  echo "Ready: try \`docker run --rm -it IMAGE\` (rmachine status, rmachine stop)."
fi
