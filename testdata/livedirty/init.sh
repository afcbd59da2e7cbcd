#!/bin/sh
# /init of the live dirty-poll guest (testdata/livedirty/build.sh): loads
# the virtio-blk chain, mounts the ext4 filesystem of /dev/vda (noatime) on
# /mnt, starts a background writer, prints "=== READY ===" and then runs
# the commands the host writes on the second serial port (/dev/ttyS1), one
# a line:
#   round K        the scripted workload of round K (work_K below)
#   churn N SEED TOTAL  rewrites N of the TOTAL files of /mnt/tree (the
#                       benchmark's churn)
#   jwrite N       writes /mnt/jw/mN and fsyncs it (no global sync, no
#                  checkpoint): its inode and directory entry are in the
#                  journal only, "=== JWRITE N DONE ==="
# Every path a round writes or deletes is announced on the console, the
# ground truth of the tests:
#   === W K /path ===   written (created, or content changed) in round K
#   === D K /path ===   deleted in round K
#   === DIR K /path === a directory created in round K
#   === ROUND K DONE ===  after the round's sync and a checkpoint of the
#                         journal (ckpt): what the round changed is home, not
#                         in the journal, so only the dirty bitmap tells
# The background writer keeps writing files of /mnt/bg the whole time and
# announces each ("=== BG /bg/bN ==="), with its counter ("=== TICK N ===").
# Kernel command line: vmscope.bg=0 turns the background writer off.
export PATH=/bin:/sbin

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
echo 1 > /proc/sys/kernel/printk
for m in virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_blk; do
  insmod /lib/modules/$m.ko || echo "=== FAIL insmod $m ==="
done
i=0
while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
mount -t ext4 -o noatime /dev/vda /mnt || { echo "=== FAIL mount ==="; poweroff -f; }
cd /mnt

w() { # w K PATH CONTENT: write a file and announce it
  printf '%s\n' "$3" > "/mnt$2" && echo "=== W $1 $2 ==="
}
d() { # d K PATH: delete a file and announce it
  rm "/mnt$2" && echo "=== D $1 $2 ==="
}

work_1() {
  mkdir -p /mnt/r1 && echo "=== DIR 1 /r1 ==="
  for i in 1 2 3 4 5 6 7 8; do w 1 /r1/f$i "round 1 file $i"; done
}
work_2() {
  mkdir -p /mnt/r2 && echo "=== DIR 2 /r2 ==="
  for i in 1 2 3 4 5; do w 2 /r2/f$i "round 2 file $i"; done
  w 2 /r2/marker.txt "VMSCOPE_LIVE_MARKER_ROUND2"
  echo "appended in round 2" >> /mnt/r1/f1 && echo "=== W 2 /r1/f1 ==="
  d 2 /r1/f2
  d 2 /r1/f3
}
work_3() {
  for i in 1 2; do w 3 /r2/f$i "round 3 rewrote $i"; done
  d 3 /r2/f5
  mkdir -p /mnt/r3 && echo "=== DIR 3 /r3 ==="
  dd if=/dev/urandom of=/mnt/r3/big.bin bs=4096 count=64 2>/dev/null && echo "=== W 3 /r3/big.bin ==="
  w 3 /r3/small "round 3"
}
# Later rounds (the kill tests): a new file, a changed one, a deleted one.
work_n() {
  k=$1
  w "$k" "/r1/k$k" "round $k new file"
  echo "round $k" >> /mnt/r1/f4 && echo "=== W $k /r1/f4 ==="
  [ -e "/mnt/r1/k$((k-1))" ] && d "$k" "/r1/k$((k-1))"
  true
}

# churn N SEED TOTAL: overwrite N of the TOTAL files /mnt/tree/dI/fJ
# (J from 0, I = J / 1000: bench/running.sh's tree) in place, spread
# evenly from SEED: the start of each is rewritten, its size kept.
churn() {
  n=$1 seed=$2 total=$3 j=0
  step=$((total / n)); [ $step -ge 1 ] || step=1
  i=$((seed % step))
  while [ $j -lt "$n" ] && [ $i -lt "$total" ]; do
    f=/mnt/tree/d$((i / 1000))/f$i
    printf 'churn %s %s\n' "$seed" "$i" | dd of="$f" conv=notrunc 2>/dev/null
    j=$((j+1)) i=$((i+step))
  done
  echo "=== CHURNED $j ==="
}

bg() {
  mkdir -p /mnt/bg
  n=0
  while :; do
    n=$((n+1))
    f=/bg/b$((n % 40))
    echo "background write $n" > "/mnt$f"
    echo "=== BG $f ==="
    echo "=== TICK $n ==="
    usleep 50000
  done
}
if ! grep -q 'vmscope.bg=0' /proc/cmdline; then
  bg &
fi
# The command port stays open: what the host writes is never dropped.
exec 3<> /dev/ttyS1
stty raw -echo <&3 2>/dev/null
sync
echo "=== READY ==="
while read -r cmd a b c <&3; do
  case $cmd in
    round)
      case $a in 1|2|3) work_$a ;; *) work_n "$a" ;; esac
      sync
      ckpt /mnt || echo "=== FAIL ckpt ==="
      echo "=== ROUND $a DONE ==="
      ;;
    churn)
      churn "$a" "$b" "$c"
      sync
      ckpt /mnt || echo "=== FAIL ckpt ==="
      echo "=== CHURN DONE ==="
      ;;
    jwrite)
      mkdir -p /mnt/jw
      printf 'VMSCOPE_JOURNAL_ONLY_%s\n' "$a" > "/mnt/jw/m$a"
      sync "/mnt/jw/m$a" /mnt/jw
      echo "=== JWRITE $a DONE ==="
      ;;
    quit)
      break
      ;;
  esac
done
