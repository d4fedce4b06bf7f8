#!/bin/sh
# PID 1 of the aarch64 nested harness's L1 (the project's arm64 kernel at EL2 under
# qemu-system-aarch64's TCG, KVM in VHE mode, its root a read-only erofs on virtio-blk).
# It runs rmachine-vmm on /etc/nested/vm.json, the guest's console on the VMM's stdout,
# prefixed `L2| `, then `NESTED PASS` or `NESTED FAIL <why>`, and powers off. Every line
# meant for the host starts with `NESTED `.
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t tmpfs tmp /tmp
mount -t tmpfs run /run
up() { cut -d' ' -f1 /proc/uptime; }
done_() {
  echo "NESTED DONE uptime=$(up)"
  poweroff -f
  sleep 10
}
fail() {
  echo "NESTED FAIL $*"
  [ -s /tmp/vmm.log ] && sed 's/^/VMM| /' /tmp/vmm.log | tail -n 30
  done_
}
. /etc/nested/env
echo "NESTED L1 init uptime=$(up)"
[ -c /dev/kvm ] || fail "no /dev/kvm in L1: $(dmesg | grep -i kvm | tail -n 3)"

echo "NESTED L1 starting rmachine-vmm uptime=$(up)"
( sleep "$L2_TIMEOUT_S"; echo "NESTED L1 killing rmachine-vmm after ${L2_TIMEOUT_S}s"; killall -9 rmachine-vmm ) &
WATCHDOG=$!
( RUST_LOG=${VMM_LOG_LEVEL:-info} /bin/rmachine-vmm --config /etc/nested/vm.json --log-file /tmp/vmm.log </dev/null 2>/tmp/vmm.err
  echo $? > /tmp/vmm.status ) | tee /tmp/l2-console.log | while IFS= read -r l; do echo "L2| $l"; done
kill $WATCHDOG 2>/dev/null
STATUS=$(cat /tmp/vmm.status 2>/dev/null)
echo "NESTED L1 rmachine-vmm exited status=$STATUS uptime=$(up)"
sed 's/^/VMM| /' /tmp/vmm.log | grep -v ' INFO ' | tail -n 20
sed 's/^/VMM| /' /tmp/vmm.err | tail -n 20
[ "$STATUS" = 0 ] || fail "rmachine-vmm exited with status $STATUS"
grep -q "$EXPECT_L2" /tmp/l2-console.log || fail "the guest did not print: $EXPECT_L2"
echo "NESTED PASS"
done_
