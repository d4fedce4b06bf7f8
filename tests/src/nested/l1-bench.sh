#!/bin/busybox sh
# PID 1 of the nested benchmark's L1 VM. After the common setup (l1-setup.sh) it reads the
# guest's root disk into L1's page cache, then boots the guest once per word of
# `rmbench.order=` on L1's command line (comma-separated: `warmup` and `rmachine-vmm` run
# rmachine-vmm, `qemu` runs QEMU -M microvm -enable-kvm), one after the other, on the same
# disks; every boot reads the root disk warm and the data disk cold. rmachine-nested-client
# starts each VMM itself and times it: the agent's first console line, its ping, the
# engine's `GET /version`, and a file tree's reading and copying in L1's /share, natively
# and in the guest through virtio-fs (virtiofsd); then it asks the guest to power off, waits for the VMM to exit,
# and prints `NESTED BENCH label=… init_s=…`. Ends with `NESTED PASS` or
# `NESTED FAIL <why>`, and powers off.
. /etc/nested/l1-setup.sh

[ -c /dev/vhost-vsock ] || fail "no /dev/vhost-vsock after loading vhost_vsock"
ORDER=$(tr ' ' '\n' < /proc/cmdline | sed -n 's/^rmbench\.order=//p')
[ -n "$ORDER" ] || fail "no rmbench.order= on L1's command line"

# Linux drops a block device's page cache at its last close: the init holds the root disk
# open (fd 3) so that what it reads now stays cached for every guest boot. The data disk is
# not held, so every boot reads it cold.
exec 3< /dev/rm-root
echo "NESTED L1 reading the root disk into the page cache uptime=$(up)"
cat /dev/rm-root > /dev/null || fail "cannot read /dev/rm-root"
echo "NESTED L1 root disk cached uptime=$(up) $(grep -E '^(MemFree|Buffers):' /proc/meminfo | tr -s ' ' | tr '\n' ' ')"

export RUST_LOG=${VMM_LOG_LEVEL:-info}
for label in $(echo "$ORDER" | tr ',' ' '); do
  case "$label" in
    qemu) transport="--vsock $GUEST_CID" argv=/etc/nested/qemu.argv ;;
    rmachine-vmm | warmup) transport="--uds /run/vsock.sock" argv=/etc/nested/rmachine-vmm.argv ;;
    *) fail "unknown run $label in rmbench.order=$ORDER" ;;
  esac
  rm -f /run/vsock.sock /tmp/vmm.log
  # The share workloads: the client times them in L1's /share, then in the guest through
  # virtio-fs (a fresh virtiofsd per guest: it exits with its VMM).
  mkdir -p /share
  start_virtiofsd /share
  echo "NESTED L1 run $label uptime=$(up) loadavg=$(cut -d' ' -f1-3 /proc/loadavg | tr ' ' ,) $(grep -E '^(MemFree|Buffers):' /proc/meminfo | tr -s ' ' | tr '\n' ' ')"
  /bin/rmachine-nested-client $transport --label "$label" --spawn-argv "$argv" \
    --console-log "/tmp/$label-console.log" --init-marker "$INIT_MARKER" \
    --timeout-s "$CLIENT_TIMEOUT_S" --shutdown-timeout-s "$SHUTDOWN_TIMEOUT_S" \
    --retry-ms "$RETRY_MS" --share-bench "/share:$L2_SHARE_DIR"
  status=$?
  kill $VIRTIOFSD 2>/dev/null; wait $VIRTIOFSD 2>/dev/null
  if [ $status != 0 ]; then
    tail -n 60 "/tmp/$label-console.log" | sed 's/^/L2| /'
    sed 's/^/STDERR| /' "/tmp/$label-console.log.stderr" | tail -n 20
    [ -f /tmp/vmm.log ] && tail -n 20 /tmp/vmm.log | sed 's/^/VMM| /'
    fail "the $label run failed (status $status; see its NESTED CLIENT FAIL line)"
  fi
  if grep -qw rmbench.console=1 /proc/cmdline; then
    sed 's/^/L2| /' "/tmp/$label-console.log"
  fi
done
echo "NESTED PASS"
echo "NESTED DONE uptime=$(up)"
sync
reboot -f
sleep 10
