# Sourced first by every L1 init of the nested harness (`/etc/nested/l1-setup.sh`): mounts,
# loopback, `up` (uptime), `fail` (prints `NESTED FAIL <why>` and powers off) and `start_virtiofsd`, the shell variables
# of /etc/nested/env, the KVM, virtio and vhost-vsock modules, /dev/kvm, and the disks the
# host gave, linked by serial as /dev/rm-root, /dev/rm-data and /dev/rm-config.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp
mkdir -p /run && mount -t tmpfs run /run
# Loopback, for the ports a host agent publishes on 127.0.0.1.
ip link set lo up
up() { cut -d' ' -f1 /proc/uptime; }
fail() {
  echo "NESTED FAIL $*"
  echo "NESTED DONE uptime=$(up)"
  sync
  reboot -f
  sleep 10
}
# start_virtiofsd DIR: virtiofsd (the bundle in /opt/virtiofsd) shares DIR at
# /run/virtiofsd.sock, log in /tmp/virtiofsd.log, pid in $VIRTIOFSD; returns once it listens.
# It serves one VMM and exits when that VMM disconnects.
start_virtiofsd() {
  rm -f /run/virtiofsd.sock
  /opt/virtiofsd/ld.so --library-path /opt/virtiofsd/lib /opt/virtiofsd/virtiofsd \
    --socket-path /run/virtiofsd.sock --shared-dir "$1" --cache never --sandbox none \
    --log-level info </dev/null >/tmp/virtiofsd.log 2>&1 &
  VIRTIOFSD=$!
  i=0
  while [ ! -S /run/virtiofsd.sock ]; do
    i=$((i + 1))
    [ $i -gt 200 ] && fail "virtiofsd did not create its socket: $(cat /tmp/virtiofsd.log)"
    sleep 0.1
  done
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

