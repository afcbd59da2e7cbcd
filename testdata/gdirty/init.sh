#!/bin/sh
# /init of the gdirty fixture (testdata/gdirty/build.sh): the guest-disk
# initramfs (busybox-static, the virtio-blk chain, testdata/guest-disk/lister)
# plus fuse.ko and ntfs-3g with its libraries, xfs.ko (and libcrc32c.ko),
# dm-mod.ko and dmsetup. It runs one workload on NTFS volumes (through
# ntfs-3g: the Debian cloud kernel has no ntfs3) and on an XFS filesystem in
# an LVM logical volume (mapped with dmsetup: the kernel has no dm-mod.create=),
# the ground truth of the dirty-file tests of other formats
# (dirty/guestformats_test.go). The guest-disk /init is kept as
# /guest-disk-init: its first workload is rerun here.
#
# Kernel command line:
#   vmscope.work=prep|1    which workload (see work_* below)
#   vmscope.lvm=vdX        the disk whose first partition is the LVM PV; the
#                          other virtio disks hold NTFS in their first partition
#   vmscope.dm=S:L:O,...   the LV's linear table (sectors: LV start, length,
#                          offset on the PV), computed on the host from lvs
# Each volume is listed by the guest after the workload ("=== LIST after
# vdX ===", testdata/guest-disk/lister: the listing after prep is the one
# before workload 1, whose disks are what prep left), the kernel's
# own LV table is printed ("=== DMTABLE ===" lines), then everything is
# unmounted, "=== DONE <work> ===" and `poweroff -f`. A failure prints
# "=== FAIL <what> ===".
export PATH=/bin:/sbin:/usr/bin:/usr/sbin

# work_prep builds the tree the workload changes (fs: ntfs or xfs).
work_prep() {
  fs=$1
  mkdir -p etc data olddir/sub unrelated w2 newtree docs
  echo "127.0.0.1 localhost" > etc/hosts
  echo "root:x:0:0:root:/root:/bin/sh" > etc/passwd
  seq 1 3000 | sed 's/^/log line /' > data/append.log
  dd if=/dev/urandom of=data/inplace.bin bs=4096 count=16 2>/dev/null
  seq 1 4000 > data/trunc.txt
  dd if=/dev/urandom of=data/sparse.img bs=4096 count=1 seek=255 2>/dev/null
  dd if=/dev/urandom of=data/sparse.img bs=4096 count=1 conv=notrunc 2>/dev/null
  echo renamed > data/old-name.txt
  echo linked > data/linkme.txt
  echo deleted > data/delete-me.txt
  echo a > olddir/a.txt
  echo b > olddir/sub/b.txt
  dd if=/dev/urandom of=big.bin bs=65536 count=64 2>/dev/null
  i=0
  while [ $i -lt 200 ]; do echo "unrelated file $i" > unrelated/f$i; i=$((i+1)); done
  echo edit > w2/edit.txt
  echo rm > w2/rm.txt
  echo "with a stream" > docs/withstream.txt
  ln -s etc/hosts lnk
  if [ "$fs" = ntfs ]; then
    lister setxattr docs/withstream.txt user.zone "ZoneId=3"
  else
    lister setxattr unrelated/f150 user.vmscope first
    # frag.bin: 120 one-block extents with holes between them, written
    # from the end (no speculative preallocation past EOF): its data fork
    # is a B+tree. grow.bin: one extent, made a B+tree by workload 1.
    i=119
    while [ $i -ge 0 ]; do
      dd if=/dev/urandom of=frag.bin bs=4096 count=1 seek=$((i*2)) conv=notrunc 2>/dev/null
      i=$((i-1))
    done
    dd if=/dev/urandom of=grow.bin bs=4096 count=8 2>/dev/null
  fi
}

# work_1: the first workload of the ext4 ground truth (TestGuestWrites:
# /guest-disk-init is testdata/guest-disk/init.sh; on NTFS, ntfs-3g takes
# its chmod and chown silently and makes its user.vmscope attribute a new
# stream), then changes of the format's own structures.
work_1() {
  fs=$1
  sh /guest-disk-init work 1
  echo w2 line >> w2/edit.txt
  rm w2/rm.txt
  if [ "$fs" = ntfs ]; then
    # alternate data streams (streams_interface=xattr: attribute user.NAME
    # is stream NAME): one changed, one added
    lister setxattr docs/withstream.txt user.zone "ZoneId=4"
    lister setxattr w2/edit.txt user.hidden "a new stream"
  else
    # frag.bin: fill 20 holes in place (its B+tree's records change);
    # grow.bin: 40 more one-block extents past a hole each (its fork
    # turns from extents into a B+tree)
    i=1
    while [ $i -lt 40 ]; do
      dd if=/dev/urandom of=frag.bin bs=4096 count=1 seek=$i conv=notrunc 2>/dev/null
      i=$((i+2))
    done
    i=49
    while [ $i -ge 10 ]; do
      dd if=/dev/urandom of=grow.bin bs=4096 count=1 seek=$((i*2)) conv=notrunc 2>/dev/null
      i=$((i-1))
    done
  fi
}

# `/init work NAME FS` runs one workload in the current directory, stopping
# at the first failing command.
if [ "${1:-}" = work ]; then
  set -e
  work_$2 "$3"
  exit 0
fi

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
mkdir -p /etc /run
ln -sf /proc/mounts /etc/mtab
echo 1 > /proc/sys/kernel/printk
fail() { echo "=== FAIL $* ==="; poweroff -f; }
for m in virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_blk fuse libcrc32c xfs dm-mod; do
  insmod /lib/modules/$m.ko || fail "insmod $m"
done
arg() { sed -n "s/.*vmscope\.$1=\([^ ]*\).*/\1/p" /proc/cmdline; }
work=$(arg work)
lvmdisk=$(arg lvm)
dmt=$(arg dm)

i=0
while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
mounted=""
for dev in /dev/vd[a-z]; do
  [ -b "$dev" ] || continue
  name=${dev##*/}
  i=0
  while [ ! -b "${dev}1" ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done
  mnt=/mnt/$name
  mkdir -p "$mnt"
  if [ "$name" = "$lvmdisk" ]; then
    fs=xfs
    # the LV's table: one linear target per segment, on the PV
    echo "$dmt" | tr ',' '\n' | while IFS=: read -r s l o; do
      echo "$s $l linear ${dev}1 $o"
    done > /tmp/table
    DM_DISABLE_UDEV=1 dmsetup create --noudevsync gvg-xfs /tmp/table || fail "dmsetup create"
    echo "=== DMTABLE ==="
    DM_DISABLE_UDEV=1 dmsetup table gvg-xfs | sed 's/^/dmtable: /'
    echo "=== END DMTABLE ==="
    lv=/dev/mapper/gvg-xfs
    [ -b "$lv" ] || lv=/dev/dm-0
    mount -t xfs -o noatime,allocsize=4096 "$lv" "$mnt" || fail "mount xfs $lv"
  else
    fs=ntfs
    ntfs-3g -o noatime,streams_interface=xattr "${dev}1" "$mnt" || fail "ntfs-3g ${dev}1"
  fi
  mounted="$mounted $mnt"
  (cd "$mnt" && sh /init work "$work" "$fs") || fail "work $work on $name"
done
[ -n "$mounted" ] || fail "no virtio disk"
sync
for mnt in $mounted; do lister list "after ${mnt##*/}" "$mnt" || fail "list after $mnt"; done
for mnt in $mounted; do umount "$mnt" || fail "umount $mnt"; done
# ntfs-3g closes the volume when it gets the unmount; wait for it to exit
i=0
while pidof ntfs-3g >/dev/null && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done
pidof ntfs-3g >/dev/null && fail "ntfs-3g still running"
if [ -n "$lvmdisk" ]; then DM_DISABLE_UDEV=1 dmsetup remove --noudevsync gvg-xfs || fail "dmsetup remove"; fi
sync
echo "=== DONE $work ==="
poweroff -f
