#!/bin/sh
# /init of the guest-disk fixture (testdata/guest-disk/build.sh): a
# busybox-static initramfs that loads the virtio-blk chain of the Debian
# cloud kernel, mounts the ext4 filesystem of every virtio disk (/dev/vdX1,
# or /dev/vdX without a partition table) and runs one scripted workload on
# each, the ground truth of the dirty-file tests (dirty/guest_test.go).
#
# Kernel command line:
#   vmscope.work=1|2|crash|fccrash|recover   which workload (see work_* below)
# Clean workloads end with sync, umount and `poweroff -f`, so QEMU exits and
# stores its persistent bitmaps. "crash" mounts with commit=1, writes, waits
# for the journal to commit, prints "=== CRASH-READY ===" and blocks: the
# host kills QEMU, leaving committed transactions in the journal.
# Markers on the serial console: "=== DONE <work> ===", "=== FAIL <what> ===".
# Before and after its workload, each filesystem is listed by the guest
# itself (testdata/guest-disk/lister: path, inode, mode, owner, size, times,
# sha256, xattrs, as JSON lines between "=== LIST before|after vdX ===" and
# "=== END LIST ... ==="): the tests' reference of what changed.
export PATH=/bin:/sbin

# work_1: one of every kind of change the dirty poll must find.
work_1() {
  echo new file > data/new.txt
  echo appended line >> data/append.log
  touch -r data/inplace.bin /tmp/ref
  dd if=/dev/urandom of=data/inplace.bin bs=4096 count=1 seek=3 conv=notrunc 2>/dev/null
  touch -r /tmp/ref data/inplace.bin
  truncate -s 100 data/trunc.txt
  dd if=/dev/urandom of=data/sparse.img bs=4096 count=2 seek=100 conv=notrunc 2>/dev/null
  mv data/old-name.txt data/new-name.txt
  ln data/linkme.txt data/hardlink.txt
  chmod 600 etc/passwd
  chown 1000:1000 etc/hosts
  rm data/delete-me.txt
  echo short-lived > data/tmp.txt
  sync
  rm data/tmp.txt
  mkdir -p newtree/a/b
  echo one > newtree/a/one
  echo two > newtree/a/b/two
  rm -rf olddir
  ln -sfn etc/passwd lnk
  dd if=/dev/urandom of=big.bin bs=65536 count=64 2>/dev/null
  lister setxattr unrelated/f150 user.vmscope tagged
}

# work_2: a second, disjoint workload on the same filesystem.
work_2() {
  echo w2 line >> w2/edit.txt
  rm w2/rm.txt
  echo created by w2 > w2/created.txt
  dd if=/dev/urandom of=unrelated/f007 bs=100 count=1 conv=notrunc 2>/dev/null
  mv newtree/a/one newtree/one-moved
  rm data/new.txt   # created by work_1: alive at one poll only
}

# work_crash: metadata and data changes left in the journal.
work_crash() {
  work_1
  mkdir -p crash/d
  i=0
  while [ $i -lt 40 ]; do echo "crash $i" > crash/d/f$i; i=$((i+1)); done
  rm -rf unrelated/f01*
}

# work_fccrash: changes that reach the journal only as fast commits (the
# filesystem has fast_commit; mounted with commit=600, so no full commit
# follows): a new file and an append, each fsync'ed.
work_fccrash() {
  echo "fast commit new file" > data/fc-new.txt
  sync data/fc-new.txt
  echo "fast commit appended line" >> data/append.log
  sync data/append.log
}

# work_recover: nothing; mounting the crashed filesystem recovered its
# journal (fast commits included), the clean unmount writes it back.
work_recover() {
  :
}

# `/init work NAME` runs one workload in the current directory, stopping at
# the first failing command.
if [ "${1:-}" = work ]; then
  set -e
  work_$2
  exit 0
fi

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
echo 1 > /proc/sys/kernel/printk
for m in virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_blk; do
  insmod /lib/modules/$m.ko || echo "=== FAIL insmod $m ==="
done
work=$(sed -n 's/.*vmscope\.work=\([a-z0-9]*\).*/\1/p' /proc/cmdline)

fail() { echo "=== FAIL $* ==="; poweroff -f; }

# list TAG DIR: the guest's listing of the filesystem at DIR, taken with
# the filesystem remounted noatime (readlink would touch a symlink's atime).
list() {
  mount -o remount,noatime "$2" || return 1
  lister list "$1" "$2" || return 1
  mount -o remount,relatime "$2"
}

opts=""
[ "$work" = crash ] && opts="-o commit=1"
[ "$work" = fccrash ] && opts="-o commit=600"
i=0
while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
mounted=""
for dev in /dev/vd[a-z]; do
  [ -b "$dev" ] || continue
  part=${dev}1
  [ -b "$part" ] || part=$dev
  mnt=/mnt/${dev##*/}
  mkdir -p "$mnt"
  mount -t ext4 $opts "$part" "$mnt" || fail "mount $part"
  mounted="$mounted $mnt"
  [ "$work" = fccrash ] || list "before ${dev##*/}" "$mnt" || fail "list before $part"
  (cd "$mnt" && sh /init work "$work") || fail "work $work on $part"
done
[ -n "$mounted" ] || fail "no virtio disk"
if [ "$work" = crash ] || [ "$work" = fccrash ]; then
  # crash, commit=1: the transactions reach the journal, not their home
  # blocks; fccrash: the fsyncs returned once their fast commits were written
  if [ "$work" = crash ]; then
    # fsync every file: its data too (delayed allocation would leave it to
    # the flusher) is in the committed transactions, so that the guest's
    # listing is what they hold; a global sync would also write the
    # metadata home and leave the journal nothing to replay
    for mnt in $mounted; do find "$mnt" -type f -print0 | xargs -0 sync || fail "fsync $mnt"; done
    sleep 3
    for mnt in $mounted; do list "after ${mnt##*/}" "$mnt" || fail "list after $mnt"; done
  fi
  echo "=== CRASH-READY ==="
  while :; do sleep 3600; done
fi
sync
for mnt in $mounted; do list "after ${mnt##*/}" "$mnt" || fail "list after $mnt"; done
for mnt in $mounted; do umount "$mnt" || fail "umount $mnt"; done
echo "=== DONE $work ==="
poweroff -f
