#!/bin/busybox sh
# PID 1 of the nested harness's L1 VM (a busybox initramfs under QEMU TCG with emulated SVM).
# After the common setup (l1-setup.sh: modules, /dev/kvm, the disks by serial) it runs
# rmachine-vmm on the L2 guest image and rmachine-nested-client beside it, prints the L2
# console and the VMM log, then `NESTED PASS` or `NESTED FAIL <why>`, and powers off.
# Every line meant for the host starts with `NESTED `; L2's console lines with `L2| `,
# the VMM's log with `VMM| `.
. /etc/nested/l1-setup.sh

# The folder L1 shares with the guest through virtio-fs.
mkdir -p /share
echo "hello from L1" > /share/hello.txt
start_virtiofsd /share
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
