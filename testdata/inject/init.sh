#!/bin/sh
# /init of the injection fixture (testdata/inject/build.sh): the guest
# initramfs of testdata/guest with the virtio-blk chain, the dummy and
# strict programs, and vmscope_rootkit.ko of testdata/rootkit (loaded only
# with vmscope.rootkit=MODE on the kernel command line). It mounts the ext4
# data disk /dev/vda read-only on /mnt/data, starts the dummy candidates,
# prints the guest's own view of the known targets between
# "=== BEGIN name ===" / "=== END name ===" markers, prints "=== READY ===",
# and serves commands on /dev/ttyS1 (see the loop at the end).
#
# Candidates: dummy (static C, prints DUMMY OK n to /dev/ttyS2 each second),
# sleep (busybox sleep, never returns to user mode), strict (seccomp strict
# mode), threader (a Go program with 4 threads), nc (nc -l -p 4444: a
# listening TCP socket).
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs -o size=64m tmpfs /tmp
echo 1 > /proc/sys/kernel/printk
echo 0 > /proc/sys/kernel/kptr_restrict
ifconfig lo 127.0.0.1 up
for m in virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_blk; do
  insmod /lib/modules/$m.ko || echo "=== FAIL insmod $m ==="
done
mode=$(sed -n 's/.*vmscope\.rootkit=\([a-z]*\).*/\1/p' /proc/cmdline)
if [ -n "$mode" ]; then
  insmod /lib/modules/vmscope_rootkit.ko mode="$mode" || echo "=== FAIL insmod rootkit ==="
fi
mkdir -p /mnt/data
for i in $(seq 100); do [ -b /dev/vda ] && break; sleep 0.1; done
mount -t ext4 -o ro,noload /dev/vda /mnt/data || echo "=== FAIL mount ==="
stty -F /dev/ttyS2 raw -echo clocal 2>/dev/null

/bin/dummy /dev/ttyS2 &
p_dummy=$!
sleep 31337 &
p_sleep=$!
sleep 999999 | /bin/strict &
p_strict=$!
/bin/threader 4 &
p_threader=$!
nc -l -p 4444 &
p_nc=$!
sleep 1

begin() { echo "=== BEGIN $* ==="; }
end() { echo "=== END $* ==="; }
k=/mnt/data/known
begin scenario
echo "dummy $p_dummy"
echo "sleep $p_sleep"
echo "strict $(pidof strict)"
echo "threader $p_threader"
echo "nc $p_nc"
end scenario
begin ls; ls -lan $k; end ls
begin ls-root; ls -a /mnt/data; end ls-root
begin stat
stat -c '%n|%i|%f|%h|%u|%g|%s|%X|%Y|%Z' $k $k/hello.txt $k/owned.txt $k/sub $k/link $k/empty /mnt/data/big.bin
end stat
begin sha256; sha256sum $k/hello.txt $k/owned.txt $k/empty $k/sub/nested.txt /mnt/data/mid.bin /mnt/data/big.bin; end sha256
begin ps; ps -o pid,ppid,user,comm,args; end ps
begin netstat; netstat -an; end netstat
begin rootkit; echo "scenario=${mode:-none}"; ls /mnt/data | grep vmscope_hidden || echo "hidden=yes"; end rootkit
echo "=== READY ==="

# Commands, one a line on /dev/ttyS1:
#   snap PID ID     the process's maps, fds and signal masks (SigBlk etc.),
#                   between "=== BEGIN snap ID ===" and "=== END snap ID ==="
#   run ID CMD...   runs CMD with sh -c, its output between
#                   "=== BEGIN run ID ===" / "=== END run ID ==="
#   spawn N         starts N more `sleep` processes (bench: ps of many)
stty -F /dev/ttyS1 -echo clocal 2>/dev/null
while :; do
  while read -r cmd a b; do
    case "$cmd" in
    snap)
      begin snap $b
      cat /proc/$a/maps
      ls -l /proc/$a/fd | sed 1d | awk '{print $9, $10, $11}'
      grep -E '^(Sig|Shd)' /proc/$a/status
      grep -E '^State' /proc/$a/status
      end snap $b
      ;;
    run)
      begin run $a
      sh -c "$b"
      end run $a
      ;;
    spawn)
      for i in $(seq "$a"); do sleep 77777 & done
      echo "=== SPAWNED $a ==="
      ;;
    esac
  done < /dev/ttyS1
  sleep 0.2
done
