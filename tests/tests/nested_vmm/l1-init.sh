#!/bin/busybox sh
# PID 1 of the nested harness's L1 VM (a busybox initramfs under QEMU TCG with emulated SVM).
# Loads the KVM and virtio modules, finds the disks the host gave (by serial), runs
# rmachine-vmm on the L2 guest image and rmachine-nested-client beside it, prints the L2
# console and the VMM log, then `NESTED PASS` or `NESTED FAIL <why>`, and powers off.
# Every line meant for the host starts with `NESTED `; L2's console lines with `L2| `,
# the VMM's log with `VMM| `.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp
mkdir -p /run && mount -t tmpfs run /run
up() { cut -d' ' -f1 /proc/uptime; }
fail() {
  echo "NESTED FAIL $*"
  echo "NESTED DONE uptime=$(up)"
  sync
  reboot -f
  sleep 10
}
echo "NESTED L1 init uptime=$(up)"
. /etc/nested/env

for m in $(cat /etc/nested/modules); do
  insmod "/lib/modules/$m" || fail "insmod $m"
done
echo "NESTED L1 modules loaded uptime=$(up)"
[ -c /dev/kvm ] || fail "no /dev/kvm after loading kvm-amd (svm: $(grep -c -w svm /proc/cpuinfo) cpus with svm)"
echo "NESTED L1 /dev/kvm ready: kvm_amd nested=$(cat /sys/module/kvm_amd/parameters/nested) npt=$(cat /sys/module/kvm_amd/parameters/npt)"

# The host names its disks by serial: rm-root, rm-data, rm-config.
i=0
while :; do
  for b in /sys/block/vd*; do
    [ -e "$b/serial" ] || continue
    s=$(cat "$b/serial")
    case "$s" in rm-*) ln -sf "/dev/${b##*/}" "/dev/$s" ;; esac
  done
  [ -b /dev/rm-root ] && [ -b /dev/rm-data ] && [ -b /dev/rm-config ] && break
  i=$((i + 1))
  [ $i -gt 100 ] && fail "disks rm-root, rm-data, rm-config not found: $(ls /sys/block)"
  sleep 0.1
done
echo "NESTED L1 disks: $(ls -l /dev/rm-* | sed 's/.* \(rm-[a-z]*\) -> /\1=/' | tr '\n' ' ')"

# The folder L1 shares with the guest through virtio-fs.
mkdir -p /share
echo "hello from L1" > /share/hello.txt
/opt/virtiofsd/ld.so --library-path /opt/virtiofsd/lib /opt/virtiofsd/virtiofsd \
  --socket-path /run/virtiofsd.sock --shared-dir /share --cache never --sandbox none \
  --log-level info </dev/null >/tmp/virtiofsd.log 2>&1 &
VIRTIOFSD=$!
i=0
while [ ! -S /run/virtiofsd.sock ]; do
  i=$((i + 1))
  [ $i -gt 200 ] && fail "virtiofsd did not create its socket: $(cat /tmp/virtiofsd.log)"
  sleep 0.1
done
echo "NESTED L1 virtiofsd ready uptime=$(up)"

echo "NESTED L1 starting rmachine-vmm uptime=$(up)"
# Stream the L2 console and the VMM log as they grow, so that a host-side timeout still
# shows how far the guest got.
: > /tmp/l2-console.log
: > /tmp/vmm.log
tail -n +1 -f /tmp/l2-console.log | while IFS= read -r l; do echo "L2| $l"; done &
TAIL_L2=$!
tail -n +1 -f /tmp/vmm.log | while IFS= read -r l; do echo "VMM| $l"; done &
TAIL_VMM=$!
RUST_LOG=${VMM_LOG_LEVEL:-info} /bin/rmachine-vmm --config /etc/nested/vm.json --log-file /tmp/vmm.log </dev/null >/tmp/vmm.out 2>&1 &
VMM=$!
/bin/rmachine-nested-client --uds /run/vsock.sock --timeout-s "$CLIENT_TIMEOUT_S" --vmm-pid $VMM --share-dir "$L2_SHARE_DIR"
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
kill $VIRTIOFSD 2>/dev/null
sed 's/^/VIRTIOFSD| /' /tmp/virtiofsd.log | tail -n 20
[ $CLIENT = 0 ] || fail "the client failed (status $CLIENT; see its NESTED CLIENT FAIL line)"
[ $VMM_STATUS = 0 ] || fail "rmachine-vmm exited with status $VMM_STATUS after the guest was asked to power off"
[ "$(cat /share/from-l2.txt 2>&1)" = "written by L2" ] || fail "the guest's file in the shared folder: $(cat /share/from-l2.txt 2>&1)"
echo "NESTED L1 share: the guest's file arrived: $(cat /share/from-l2.txt)"
echo "NESTED PASS"
echo "NESTED DONE uptime=$(up)"
sync
reboot -f
sleep 10
