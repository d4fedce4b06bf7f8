#!/bin/busybox sh
# PID 1 of the nested machine test: `rmachine create/start/stop` with the vmm driver inside L1,
# as a user on hardware KVM runs them. The host agent boots the guest under rmachine-vmm with
# one virtiofsd for the shared folder and passt for the network (from the `rmachine setup`
# bundles the host copied in), serves docker.sock, and stops the machine. Every line meant for
# the host starts with `NESTED `; the machine's logs are printed with their file name.
#
# virtiofsd's and passt's sandboxes pivot_root, which the initramfs (rootfs) refuses: the
# init first moves everything onto a tmpfs and switches to it.
if [ "$NESTED_SWITCHED" != 1 ]; then
  /bin/busybox mkdir -p /newroot
  /bin/busybox mount -t tmpfs -o size=90% root /newroot
  for f in /*; do
    case "$f" in /newroot) ;; *) /bin/busybox cp -a "$f" /newroot/ ;; esac
  done
  /bin/busybox mkdir -p /newroot/dev /newroot/proc /newroot/sys
  export NESTED_SWITCHED=1
  exec /bin/busybox switch_root /newroot /init
fi
. /etc/nested/l1-setup.sh
export HOME=/root RMACHINE_HOME=/opt/rmhome RMACHINE_CACHE=/opt/rmcache
# As in the other nested tests: no TSC-deadline timer in L2 (see tests/src/nested/l2.rs).
export RMACHINE_VMM_DISABLE_CPU_FEATURES=tsc_deadline_timer
M=$RMACHINE_HOME/machines/nested
show_logs() {
  for f in hostagent.log vmm.log console.log virtiofsd.log passt.log; do
    [ -f "$M/$f" ] && tail -n 40 "$M/$f" | sed "s|^|$f\| |"
  done
}
mkdir -p /root "$SHARE"
echo "hello from L1" > "$SHARE/hello.txt"
# The image's root filesystem is L1's disk rm-root (the same bytes as the host's file).
ln -s /dev/rm-root "$RMACHINE_HOME/images/$IMAGE_VERSION/rootfs.erofs"
# The jailed VMM opens it as its own user: readable by all, as the image's file is on a host.
chmod 0644 "$(readlink -f /dev/rm-root)"

echo "NESTED L1 rmachine create uptime=$(up)"
rmachine create nested --driver vmm --cpus 1 --memory "$L2_MEMORY_MIB" --disk 4G --mount "$SHARE" \
  || fail "rmachine create"
echo "NESTED L1 rmachine start uptime=$(up)"
rmachine start nested --no-use </dev/null || { show_logs; fail "rmachine start nested"; }
echo "NESTED L1 machine running uptime=$(up)"
rmachine status nested | sed 's/^/NESTED STATUS /'
# The VMM runs jailed (the host agent's default as root): the host agent says so, and both
# of its processes (the jail's parent and the VMM, PID 1 of its own PID namespace) run as
# an unprivileged user in mount and network namespaces other than L1's.
grep -q "rmachine-vmm runs jailed" "$M/hostagent.log" || { show_logs; fail "the host agent did not run the VMM jailed"; }
VMM_PIDS=$(pidof rmachine-vmm)
[ -n "$VMM_PIDS" ] || { show_logs; fail "no rmachine-vmm process"; }
for P in $VMM_PIDS; do
  U=$(awk '/^Uid:/ {print $3}' "/proc/$P/status")
  [ "$U" != 0 ] || fail "rmachine-vmm $P runs as root"
  for NS in mnt net pid_for_children; do
    [ "$(readlink "/proc/$P/ns/$NS")" != "$(readlink "/proc/1/ns/$NS")" ] || fail "rmachine-vmm $P shares L1's $NS namespace"
  done
  echo "NESTED L1 rmachine-vmm $P jailed: uid $U, mnt $(readlink "/proc/$P/ns/mnt"), net $(readlink "/proc/$P/ns/net")"
done
# The guest's address comes from passt's DHCP server (L1 has no route, so passt runs in its
# local mode and offers a link-local address rather than 10.0.2.15).
IP=$(rmachine ip nested 2>&1) || { show_logs; fail "rmachine ip: $IP"; }
echo "NESTED L1 guest address from passt: $IP"
rmachine-nested-client --uds "$M/vsock/vsock.sock" --timeout-s "$CLIENT_TIMEOUT_S" --share-dir "$SHARE" \
  --docker-sock "$M/docker.sock" --publish-port 18080 --vmm-api "$M/vmm.sock" --no-shutdown || { show_logs; fail "the client failed (see its NESTED CLIENT FAIL line)"; }
grep -q "passt started" "$M/hostagent.log" || { show_logs; fail "the host agent did not start passt"; }
# The exec service over vsock: a command's output and exit status, and `rmachine cp`.
OUT=$(rmachine shell nested -T -- sh -c 'uname -r; exit 7' </dev/null 2>&1)
CODE=$?
[ "$CODE" = 7 ] && [ -n "$OUT" ] || { show_logs; fail "rmachine shell: exit $CODE, output $OUT"; }
echo "NESTED L1 rmachine shell ran in the guest (kernel $OUT, exit $CODE) uptime=$(up)"
echo "copied from L1" > /tmp/cp-in.txt
rmachine cp /tmp/cp-in.txt nested:/tmp/cp.txt && rmachine cp nested:/tmp/cp.txt /tmp/cp-out.txt \
  && [ "$(cat /tmp/cp-out.txt)" = "copied from L1" ] || { show_logs; fail "rmachine cp both ways: $(cat /tmp/cp-out.txt 2>&1)"; }
echo "NESTED L1 rmachine cp both ways uptime=$(up)"
# Outbound through passt: a container reaches L1's loopback at 10.0.2.2, the host's address
# under both drivers (the client left its busybox image, nested-web:1, in the engine).
mkdir -p /tmp/l1www && echo "served by L1" > /tmp/l1www/index.html
httpd -p 127.0.0.1:8088 -h /tmp/l1www
OUT=$(rmachine shell nested -T -- docker run --rm nested-web:1 /bin/busybox wget -q -O- http://10.0.2.2:8088/ </dev/null 2>&1)
[ "$OUT" = "served by L1" ] || { show_logs; fail "a container fetching L1's 127.0.0.1:8088 as 10.0.2.2:8088: $OUT"; }
echo "NESTED L1 a container reached L1's loopback through passt uptime=$(up)"
echo "NESTED L1 rmachine stop uptime=$(up)"
rmachine stop nested || { show_logs; fail "rmachine stop"; }
rmachine status nested | grep -q "machine nested: stopped" || { show_logs; fail "not stopped: $(rmachine status nested)"; }
[ "$(cat "$SHARE/from-l2.txt" 2>&1)" = "written by L2" ] \
  || fail "the guest's file in the shared folder: $(cat "$SHARE/from-l2.txt" 2>&1)"
echo "NESTED L1 machine stopped, the guest's file arrived uptime=$(up)"
show_logs | grep -E "^(hostagent|vmm).log" | tail -n 20
echo "NESTED PASS"
echo "NESTED DONE uptime=$(up)"
sync
reboot -f
sleep 10
