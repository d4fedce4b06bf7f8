#!/bin/sh
# PID 1 of the aarch64 nested harness's test guest (L2, booted by rmachine-vmm inside L1 from
# a read-only erofs root on virtio-blk). It checks what the VMM gives it and prints one line,
# then powers off through PSCI. Lines for the host start with `NESTED L2 `; L1 prefixes the
# guest's console with `L2| `.
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
echo "NESTED L2 init uptime=$(cut -d' ' -f1 /proc/uptime)"
# The root disk (vda) was read to get here; the data disk (vdb) is the second transport.
root=$(cat /etc/marker)
data=$(head -c 64 /dev/vdb | tr -d '\000')
# Garbage MMIO: an address no device claims reads as all ones, a write there is dropped,
# and the VMM goes on.
unmapped=$(devmem 0x0c000000 32 2>&1)
devmem 0x0c000000 32 0x12345678 2>/dev/null
echo "NESTED L2 root=$root data=$data unmapped_read=$unmapped cpus=$(grep -c ^processor /proc/cpuinfo) arch=$(uname -m)"
poweroff -f
