#!/usr/bin/env bash
# The arm64 guest image on a Debian/Ubuntu x86_64 host, for arm64 machines under
# emulation (`rmachine create --arch arm64`): installs the cross compiler for the arm64
# kernel, QEMU's user-mode emulator registered with binfmt_misc (debootstrap runs the arm64
# packages' scripts through it), qemu-system-aarch64 for the machines and the Rust target of
# the agent; builds the static aarch64 agent and `rmachine image build --arch arm64`
# (cached by content hash under ~/.cache/rmachine like the amd64 image).
#
#   installers/linux/arm64.sh             # everything
#   installers/linux/arm64.sh --no-deps   # skip the apt and rustup steps
#
# Run as root (or with sudo) after installers/linux/setup.sh, which builds the rmachine CLI.
set -euo pipefail
cd "$(dirname "$0")/../.."

deps=1
for arg in "$@"; do
  case "$arg" in
    --no-deps) deps=0 ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "arm64.sh: unknown option $arg (see --help)" >&2; exit 2 ;;
  esac
done

step() { printf '\n== %s\n' "$*"; }

if [ "$deps" = 1 ]; then
  step "installing Debian packages (arm64 cross compiler, qemu-user-static, qemu-system-arm)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq --no-install-recommends \
    gcc-aarch64-linux-gnu qemu-user-static binfmt-support qemu-system-arm >/dev/null
  step "registering qemu-aarch64 with binfmt_misc"
  if [ ! -e /proc/sys/fs/binfmt_misc/status ]; then
    mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
  fi
  update-binfmts --enable qemu-aarch64 2>&1 | grep -v 'already enabled' || true
  step "installing the Rust target aarch64-unknown-linux-musl"
  rustup target add aarch64-unknown-linux-musl >/dev/null
fi

step "building the guest agent for aarch64 (static, musl)"
cargo build --profile agent --target aarch64-unknown-linux-musl -p rmachine-agent

step "building the arm64 guest image"
cargo build -p rmachine
./target/debug/rmachine image build --arch arm64 \
  --agent target/aarch64-unknown-linux-musl/agent/rmachine-agent
