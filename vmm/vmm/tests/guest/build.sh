#!/bin/sh
# Builds the test guest: build.sh OUT [EXTRA...]
# Used by the KVM tests (tests/support/mod.rs) and the VMM benchmark (benches/src/bin/vmm.rs);
# EXTRA are more sources or flags (the benchmark's QEMU peer links pvh.S in).
set -eu
src=$(dirname "$0")
out=$1
shift
exec gcc -ffreestanding -nostdlib -static -fno-pic -no-pie -mno-red-zone -mgeneral-regs-only \
    -fno-stack-protector -fno-asynchronous-unwind-tables -O2 -Wall -Werror \
    -Wl,-T,"$src/guest.ld" -Wl,--build-id=none -Wl,-z,noexecstack \
    -o "$out" "$src/start.S" "$src/main.c" "$@"
