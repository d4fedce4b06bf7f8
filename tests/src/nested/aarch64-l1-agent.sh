#!/bin/sh
# PID 1 of the aarch64 nested harness's L1 for the arm64 guest image: rmachine-vmm boots the
# image (its kernel `Image`, root filesystem, a data disk and a config disk, which the host
# gives L1 as virtio disks with the serials rm-root, rm-data and rm-config) with a hybrid
# vsock socket, and the static rmachine-nested-client beside it pings the agent, asks the
# engine its version and asks the guest to power off; rmachine-vmm must then exit 0.
# Lines for the host start with `NESTED `, the guest's console `L2| `, the VMM's log `VMM| `.
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t tmpfs tmp /tmp
mount -t tmpfs run /run
up() { cut -d' ' -f1 /proc/uptime; }
fail() {
  echo "NESTED FAIL $*"
  echo "NESTED DONE uptime=$(up)"
  poweroff -f
  sleep 10
}
. /etc/nested/env
echo "NESTED L1 init uptime=$(up)"
[ -c /dev/kvm ] || fail "no /dev/kvm in L1: $(dmesg | grep -i kvm | tail -n 3)"

# The host names the guest's disks by serial.
i=0
while :; do
  for b in /sys/block/vd*; do
    [ -e "$b/serial" ] || continue
    s=$(cat "$b/serial")
    case "$s" in rm-*) ln -sf "/dev/${b##*/}" "/run/$s" ;; esac
  done
  [ -b /run/rm-root ] && [ -b /run/rm-data ] && [ -b /run/rm-config ] && break
  i=$((i + 1))
  [ $i -gt 100 ] && fail "disks rm-root, rm-data, rm-config not found: $(ls /sys/block)"
  sleep 0.1
done

echo "NESTED L1 starting rmachine-vmm uptime=$(up)"
: > /tmp/l2-console.log
: > /tmp/vmm.log
tail -n +1 -f /tmp/l2-console.log | while IFS= read -r l; do echo "L2| $l"; done &
TAIL_L2=$!
tail -n +1 -f /tmp/vmm.log | while IFS= read -r l; do echo "VMM| $l"; done &
TAIL_VMM=$!
RUST_LOG=${VMM_LOG_LEVEL:-info} /bin/rmachine-vmm --config /etc/nested/vm.json --log-file /tmp/vmm.log </dev/null >/tmp/vmm.out 2>&1 &
VMM=$!
/bin/rmachine-nested-client --uds /run/vsock.sock --timeout-s "$CLIENT_TIMEOUT_S" --vmm-pid $VMM
CLIENT=$?
echo "NESTED L1 client exited status=$CLIENT uptime=$(up)"

# After a successful run the guest was asked to power off: the VMM must exit by itself, 0.
( sleep "$SHUTDOWN_TIMEOUT_S"; kill -9 $VMM 2>/dev/null ) &
WATCHDOG=$!
[ $CLIENT = 0 ] || kill -9 $VMM 2>/dev/null
wait $VMM
VMM_STATUS=$?
kill $WATCHDOG 2>/dev/null
echo "NESTED L1 rmachine-vmm exited status=$VMM_STATUS uptime=$(up)"
sleep 1
kill $TAIL_L2 $TAIL_VMM 2>/dev/null
sed 's/^/VMM| /' /tmp/vmm.out
[ $CLIENT = 0 ] || fail "the client failed (status $CLIENT; see its NESTED CLIENT FAIL line)"
[ $VMM_STATUS = 0 ] || fail "rmachine-vmm exited with status $VMM_STATUS after the guest was asked to power off"
echo "NESTED PASS"
echo "NESTED DONE uptime=$(up)"
poweroff -f
sleep 10
