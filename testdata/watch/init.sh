#!/bin/sh
# /init of the watch fixture (testdata/watch/build.sh): the guest initramfs
# of testdata/guest with the virtio-blk chain, this script and
# testdata/watch/actor. It mounts the ext4 data disk /dev/vda on
# /mnt/data, prints the guest's own view of the files the tests watch
# (stat: name, inode, device; ls -i), starts the inotify logger, prints
# "=== READY ===", then waits for a line on the second serial port
# (/dev/ttyS1: the host says when vmscope watches) and runs the scenario
# (actor scenario: ACT lines), and prints "=== SCENARIO DONE ===" and the
# stat of the files the scenario made; or runs the benchmark loop of
# bench/watch.sh (see the command loop at the end). The guest then idles
# (it must still run when the tests check it).
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs -o size=16m tmpfs /tmp
echo 1 > /proc/sys/kernel/printk
echo 0 > /proc/sys/kernel/kptr_restrict
# the virtio-blk chain the build put in /lib/modules, in load order (5.10
# has no virtio_pci_legacy_dev/modern_dev: testdata/watch/guest510.sh)
for m in virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_blk; do
  [ -f /lib/modules/$m.ko ] || continue
  insmod /lib/modules/$m.ko || echo "=== FAIL insmod $m ==="
done
[ -f /lib/modules/virtio_blk.ko ] || echo "=== FAIL no virtio_blk module ==="
mkdir -p /mnt/data
for i in $(seq 100); do [ -b /dev/vda ] && break; sleep 0.1; done
mount -t ext4 /dev/vda /mnt/data || echo "=== FAIL mount ==="
d=/mnt/data/watched
echo "=== BEGIN stat ==="
# cold.txt is left out: it stays out of the dentry cache until the scenario
stat -c '%n %i %d' $d/secret.txt $d/config.txt $d/notes.txt $d/moveme.txt $d/victim.txt /mnt/data/bulk/f000 /mnt/data/bulk/f001 /bin/busybox /init
echo "=== END stat ==="
echo "=== BEGIN ls-i ==="
ls -i $d/secret.txt $d/config.txt $d/notes.txt
echo "=== END ls-i ==="
echo "=== BEGIN mounts ==="
cat /proc/mounts
echo "=== END mounts ==="
# warm the dentry cache for the files the benchmark watches untouched:
# stat looks them up without reading them (a read updates their atime
# under relatime, dirtying the inodes, whose writeback ~30 s later then
# writes their watched i_state: a real access the benchmark must not see)
stat -c %i /mnt/data/bulk/f10[0-9] > /dev/null
/bin/actor inotify $d /mnt/data/bulk &
sleep 1
echo "=== READY ==="
# Commands, one a line on /dev/ttyS1 (clocal: a host that disconnects is
# no hangup):
#   go                  the scenario (once)
#   short               the short scenario (actor short), then "=== SHORT DONE ==="
#   bench N HZ ID       the benchmark loop on N files (touching notes.txt
#                       at HZ per second when HZ > 0), then "=== BENCH DONE ID ==="
stty -F /dev/ttyS1 -echo clocal 2>/dev/null
while :; do
  while read -r cmd a b c; do
    case "$cmd" in
    go)
      echo "=== SCENARIO START ==="
      /bin/actor scenario /mnt/data
      echo "=== SCENARIO DONE ==="
      echo "=== BEGIN stat-after ==="
      stat -c '%n %i %d' $d/cold.txt $d/moved.txt
      echo "=== END stat-after ==="
      ;;
    short)
      echo "=== SHORT START ==="
      /bin/actor short /mnt/data
      echo "=== SHORT DONE ==="
      ;;
    bench)
      /bin/actor bench /mnt/data/bench "$a" "$b" $d/notes.txt
      echo "=== BENCH DONE $c ==="
      ;;
    esac
  done < /dev/ttyS1
  sleep 0.2
done
