#!/usr/bin/env bash
# rmachine Desktop: time from launching the app to the first painted machine list, and the
# app's idle memory (RSS) and CPU over 60 s, counting the whole process tree (the app and
# WebKitGTK's web and network processes).
#
#   benches/desktop_start.sh              # release build (custom-protocol), 5 starts, 60 s idle
#   benches/desktop_start.sh --debug      # the debug build instead
#   RUNS=10 IDLE_S=30 benches/desktop_start.sh
#
# Runs under its own Xvfb when DISPLAY is unset (Debian: xvfb). The machines shown are
# three `fake` machines (one running) in a temporary RMACHINE_HOME: no VM is booted, so
# the figures are the GUI's own.
set -euo pipefail
cd "$(dirname "$0")/.."

profile=release
for arg in "$@"; do
  case "$arg" in
    --debug) profile=debug ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "desktop_start.sh: unknown option $arg" >&2; exit 2 ;;
  esac
done
runs=${RUNS:-5}
idle_s=${IDLE_S:-60}

if [ "$profile" = release ]; then
  cargo build --release -q -p rmachine-desktop --features custom-protocol
else
  cargo build -q -p rmachine-desktop
fi
cargo build -q -p rmachine
app="$PWD/target/$profile/rmachine-desktop"
rmachine="$PWD/target/debug/rmachine"

tmp=$(mktemp -d /tmp/rmd-bench.XXXXXX)
xvfb_pid=
app_pid=
cleanup() {
  [ -n "$app_pid" ] && kill "$app_pid" 2>/dev/null || true
  [ -n "$xvfb_pid" ] && kill "$xvfb_pid" 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT

export RMACHINE_HOME="$tmp/home" DOCKER_CONFIG="$tmp/docker" RMACHINE_BIN="$rmachine" RMACHINE_DESKTOP_BENCH=1 RMACHINE_LOG=warn
for m in dev web ci; do "$rmachine" create "$m" --driver fake --cpus 1 --memory 1G >/dev/null; done
"$rmachine" start dev >/dev/null 2>&1

if [ -z "${DISPLAY:-}" ]; then
  for n in $(seq 150 199); do [ -e "/tmp/.X11-unix/X$n" ] || { display=":$n"; break; }; done
  Xvfb "$display" -screen 0 1280x800x24 -nolisten tcp >/dev/null 2>&1 &
  xvfb_pid=$!
  export DISPLAY="$display"
  for _ in $(seq 50); do [ -e "/tmp/.X11-unix/X${display#:}" ] && break; sleep 0.1; done
fi

now_ms() { date +%s%3N; }

# Launches the app; sets app_pid; prints the milliseconds from launch to first paint.
launch() {
  local out="$tmp/app.out" t0 line
  : >"$out"
  t0=$(now_ms)
  "$app" >"$out" 2>"$tmp/app.err" &
  app_pid=$!
  for _ in $(seq 600); do
    line=$(grep -m1 '^first-paint' "$out" || true)
    if [ -n "$line" ]; then
      local unix_ms=${line##*unix_ms=}
      echo $((unix_ms - t0))
      return 0
    fi
    kill -0 "$app_pid" 2>/dev/null || { echo "the app exited:" >&2; cat "$tmp/app.err" >&2; return 1; }
    sleep 0.05
  done
  echo "no first paint within 30 s" >&2
  return 1
}

stop_app() { kill "$app_pid" 2>/dev/null || true; wait "$app_pid" 2>/dev/null || true; app_pid=; }

# The pid and its descendants.
tree() {
  local pids=("$1") i=0 kids
  while [ $i -lt ${#pids[@]} ]; do
    kids=$(cat /proc/"${pids[$i]}"/task/*/children 2>/dev/null || true)
    for k in $kids; do pids+=("$k"); done
    i=$((i + 1))
  done
  echo "${pids[@]}"
}
# utime+stime ticks of a set of pids.
ticks() { local t=0 p s; for p in "$@"; do s=$(awk '{print $14+$15}' /proc/"$p"/stat 2>/dev/null || echo 0); t=$((t + s)); done; echo $t; }
rss_kib() { local t=0 p s; for p in "$@"; do s=$(awk '/^VmRSS/{print $2}' /proc/"$p"/status 2>/dev/null || echo 0); t=$((t + ${s:-0})); done; echo $t; }

echo "rmachine Desktop ($profile build), $(nproc) CPUs, display $DISPLAY"
times=()
for i in $(seq "$runs"); do
  ms=$(launch)
  times+=("$ms")
  echo "  start $i: first machine list painted after $ms ms"
  stop_app
done
sorted=$(printf '%s\n' "${times[@]}" | sort -n)
median=$(echo "$sorted" | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : int((a[NR/2]+a[NR/2+1])/2)}')
echo "start to first painted machine list: median $median ms (min $(echo "$sorted" | head -1), max $(echo "$sorted" | tail -1)) over $runs starts"

launch >/dev/null
sleep 5
pids=$(tree "$app_pid")
hz=$(getconf CLK_TCK)
t_start=$(ticks $pids)
s_start=$(date +%s%N)
rss_peak=0
for _ in $(seq "$idle_s"); do
  sleep 1
  pids=$(tree "$app_pid")
  r=$(rss_kib $pids)
  [ "$r" -gt "$rss_peak" ] && rss_peak=$r
done
t_end=$(ticks $pids)
s_end=$(date +%s%N)
rss_now=$(rss_kib $pids)
cpu=$(awk -v t=$((t_end - t_start)) -v hz="$hz" -v ns=$((s_end - s_start)) 'BEGIN { printf "%.2f", 100 * t / hz / (ns / 1e9) }')
echo "idle over ${idle_s} s (processes: $(echo $pids | wc -w)): RSS $((rss_now / 1024)) MiB (peak $((rss_peak / 1024)) MiB), CPU ${cpu} % of one core"
stop_app
