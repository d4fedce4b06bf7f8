#!/usr/bin/env bash
# Runs every fuzz target (or those named as arguments) for a bounded time and reports, per
# target, the executions libFuzzer reached and whether it found a crash. Exits non-zero when a
# target crashed (or failed to build or run).
#
#   vmm/fuzz/run.sh                      # every target, 60 s each
#   FUZZ_SECONDS=300 vmm/fuzz/run.sh net_frame
#
# Environment:
#   FUZZ_SECONDS  seconds per target (default 60)
#   FUZZ_WORK     working directory for corpora, artifacts and logs, outside the source tree
#                 (default ${TMPDIR:-/tmp}/rmachine-fuzz); corpora are kept between runs
#   FUZZ_MAX_LEN  largest input in bytes (default 4096)
#
# One fuzzing process at a time (no -jobs/-workers): the machines this runs on have two cores.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
seconds="${FUZZ_SECONDS:-60}"
max_len="${FUZZ_MAX_LEN:-4096}"
# No single allocation of a device needs more than a few 64 KiB frames; a guest that makes the
# VMM allocate more than this (from 1 MiB of guest memory) found an unbounded allocation.
malloc_limit=32
work="${FUZZ_WORK:-${TMPDIR:-/tmp}/rmachine-fuzz}"
all_targets=(blk_request vsock_packet net_frame)
if [ "$#" -gt 0 ]; then targets=("$@"); else targets=("${all_targets[@]}"); fi
for t in "${targets[@]}"; do
    if [ ! -f "$(dirname "${BASH_SOURCE[0]}")/fuzz_targets/$t.rs" ]; then
        echo "run.sh: unknown target $t (targets: ${all_targets[*]})" >&2
        exit 2
    fi
done

if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "run.sh: a nightly toolchain is needed (rustup toolchain install nightly)" >&2
    exit 2
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "run.sh: installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked
fi

cd "$here"
mkdir -p "$work"
# cargo-fuzz's default build: optimised, with debug assertions, overflow checks (an overflow a
# guest can cause is a finding too) and AddressSanitizer.
if ! cargo +nightly fuzz build --fuzz-dir . >"$work/build.log" 2>&1; then
    cat "$work/build.log" >&2
    echo "run.sh: build failed" >&2
    exit 2
fi

status=0
summary=()
for t in "${targets[@]}"; do
    corpus="$work/corpus/$t"
    artifacts="$work/artifacts/$t"
    log="$work/logs/$t.log"
    tmp="$work/tmp/$t"
    mkdir -p "$corpus" "$artifacts" "$(dirname "$log")" "$tmp"
    stamp="$work/logs/$t.start"
    touch "$stamp"
    echo "== $t: ${seconds}s, corpus $corpus, seeds $here/seeds/$t"
    rc=0
    started=$SECONDS
    # TMPDIR: the targets' sockets and image files go to the working directory.
    TMPDIR="$tmp" cargo +nightly fuzz run --fuzz-dir . "$t" "$corpus" "$here/seeds/$t" -- \
        -max_total_time="$seconds" -print_final_stats=1 -max_len="$max_len" \
        -timeout=10 -rss_limit_mb=4096 -malloc_limit_mb="$malloc_limit" \
        -artifact_prefix="$artifacts/" \
        >"$log" 2>&1 || rc=$?
    elapsed=$((SECONDS - started))
    rm -rf "$tmp"
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | tail -n 1 | grep -o '[0-9]*$' || true)
    rate=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | tail -n 1 | grep -o '[0-9]*$' || true)
    new_artifacts=$(find "$artifacts" -type f -newer "$stamp" | tr '\n' ' ')
    if [ "$rc" -ne 0 ] || [ -n "$new_artifacts" ]; then
        found="CRASH (exit $rc): ${new_artifacts:-no artifact written}"
        grep -m 5 -E 'panicked|ERROR:|SUMMARY' "$log" || true
        echo "   log: $log"
        status=1
    else
        found="no crash"
    fi
    line="$t: ${execs:-?} executions in ${elapsed}s of ${seconds}s (${rate:-?}/s), corpus $(find "$corpus" -type f | wc -l) inputs, $found"
    echo "   $line"
    summary+=("$line")
done

echo
echo "== summary"
printf '%s\n' "${summary[@]}"
exit "$status"
