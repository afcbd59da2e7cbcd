#!/usr/bin/env bash
# Builds the gdirty fixture: the dirty ground truth on other formats. An
# initramfs made from the guest-disk one (testdata/guest-disk/build.sh:
# busybox-static, the virtio-blk chain, the lister) plus what NTFS and XFS in
# an LV need under the Debian cloud kernel, which has no ntfs3 and no
# dm-mod.create=: fuse.ko and ntfs-3g with the shared libraries ldd names,
# xfs.ko and its dependency libcrc32c.ko, dm-mod.ko and dmsetup with its
# libraries; /init is testdata/gdirty/init.sh (the guest-disk one, whose
# workloads it reruns, is /guest-disk-init). And the disks, populated by
# the guest kernel itself in one boot (workload prep):
#
#   ntfs.raw     64 MiB, MBR, p1 (type 7) NTFS (mkntfs), its tree written
#                through ntfs-3g in the guest
#   lvm.raw      400 MiB, MBR, p1 (type 8e) the PV of VG gvg (pvcreate,
#                vgcreate, lvcreate on a loop device, activation off): LV xfs
#                in two segments (extended after LV pad), XFS (mkfs.xfs,
#                written into the segments with dd), its tree written
#                through xfs.ko on the guest's dm-linear mapping of the LV
#   base.vmdk    qemu-img convert -O vmdk of lvm.raw (monolithicSparse): the
#                base of the tests' VMDK delta chain
#   dm-table.txt the LV's table "START:LEN:OFFSET,..." (sectors) computed
#                from lvs --segments (seg_pe_ranges), pvs (pe_start) and vgs
#                (extent size): the guest's vmscope.dm= argument
#   lvs.json pvs.json vgs.json   the LVM tools' reports
#   console-prep.log   the prep boot's console, with the guest's listings of
#                the two trees (the tests' reference before their workload)
#
# Output in a cache folder named by the hash of this script, init.sh, the
# guest-disk fixture and the host packages copied in, linked as
# testdata/out-gdirty (git-ignored). Needs root (loop devices for LVM).
# The guest boots with no_timer_check (a loaded host can fail its IO-APIC
# timer check under TCG). Boot by hand:  bash testdata/gdirty/build.sh run WORK LVMDISK DISK...
set -euo pipefail
export LC_ALL=C
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
PATH=$PATH:/usr/local/go/bin:/usr/sbin:/sbin

bash "$repo/testdata/guest-disk/build.sh"
gd=$(readlink -f "$repo/testdata/out-guest-disk")
kdir=$(readlink -f "$repo/testdata/out-guest")
kver=$(cat "$gd/kernel-version")
hash=$( (cat "$here/build.sh" "$here/init.sh"; basename "$gd"; echo "$kver"; dpkg-query -W ntfs-3g dmsetup libdevmapper1.02.1 lvm2 xfsprogs) | sha256sum | cut -c1-16)
cache=${VMSCOPE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vmscope}/gdirty-$hash
out=$repo/testdata/out-gdirty
mkdir -p "$(dirname "$cache")"
exec 9>"$cache.lock"
flock 9

log() { printf 'gdirty: %s\n' "$*" >&2; }

# boot WORK LVMDISK DMTABLE CONSOLE DISK...: QEMU TCG with the disks as
# virtio-blk (format by extension), until the guest powers off.
boot() {
  local work=$1 lvmdisk=$2 dmt=$3 console=$4
  shift 4
  local drives=() d fmt
  for d in "$@"; do
    fmt=raw
    case $d in *.qcow2) fmt=qcow2 ;; *.vmdk) fmt=vmdk ;; esac
    drives+=(-drive "file=$d,format=$fmt,if=virtio")
  done
  timeout 600 qemu-system-x86_64 -accel tcg -m 256 -smp 1 -nographic -display none -no-reboot \
    -kernel "$cache/vmlinuz" -initrd "$cache/initrd.gz" \
    -append "console=ttyS0 quiet panic=-1 no_timer_check vmscope.work=$work vmscope.lvm=$lvmdisk vmscope.dm=$dmt" \
    -serial "file:$console" -monitor none -net none "${drives[@]}"
}

# initramfs: the guest-disk one, its /init replaced, plus the modules and
# the programs with their libraries.
initramfs() {
  local root=$cache/initramfs moddir=$kdir/kernel/lib/modules/$kver/kernel
  rm -rf "$root"
  mkdir -p "$root"
  (cd "$root" && gzip -dc "$gd/initrd.gz" | cpio -id --quiet)
  mv "$root/init" "$root/guest-disk-init"
  cp "$here/init.sh" "$root/init"
  chmod 755 "$root/init"
  for m in fs/fuse/fuse lib/libcrc32c fs/xfs/xfs drivers/md/dm-mod; do
    cp "$moddir/$m.ko" "$root/lib/modules/"
  done
  # the module dependencies (.modinfo depends=) are all present
  for m in "$root"/lib/modules/*.ko; do
    for dep in $(strings "$m" | sed -n 's/^depends=//p' | tr ',' ' '); do
      [ -f "$root/lib/modules/$dep.ko" ] || { log "$(basename "$m") needs $dep.ko"; exit 1; }
    done
  done
  mkdir -p "$root/usr/bin" "$root/usr/sbin"
  local p l
  for p in /usr/bin/ntfs-3g /usr/sbin/dmsetup; do
    cp "$p" "$root$p"
    for l in $(ldd "$p" | grep -o '/[^ ]*'); do
      mkdir -p "$root$(dirname "$l")"
      cp -L "$l" "$root$l"
    done
  done
  (cd "$root" && find . -print0 | sort -z | cpio --null -o -H newc --quiet -R 0:0) | gzip -9 > "$cache/initrd.gz"
  rm -rf "$root"
}

ntfs_disk() {
  rm -f ntfs.raw part.img
  truncate -s 64M ntfs.raw
  echo 'start=2048, type=7' | sfdisk -q ntfs.raw
  truncate -s $((64 * 1024 * 1024 - 2048 * 512)) part.img
  mkntfs -q -F -Q -L gdirty -p 2048 -H 0 -S 0 part.img
  dd if=part.img of=ntfs.raw bs=1M seek=1 conv=notrunc,sparse status=none
  rm -f part.img
}

LOOP=""
cleanup() { [ -z "$LOOP" ] || losetup -d "$LOOP" 2>/dev/null || true; }
trap cleanup EXIT

lvm_disk() {
  rm -f lvm.raw xfs.img
  truncate -s 400M lvm.raw
  echo 'start=2048, type=8e' | sfdisk -q lvm.raw
  LOOP=$(losetup -f --show -o $((2048 * 512)) --sizelimit $((400 * 1024 * 1024 - 2048 * 512)) lvm.raw)
  local conf="global { activation = 0 } devices { filter = [ \"a|^$LOOP\$|\", \"r|.*|\" ] global_filter = [ \"a|^$LOOP\$|\", \"r|.*|\" ] scan = [ \"/dev\" ] obtain_device_list_from_udev = 0 use_devicesfile = 0 } backup { backup = 0 archive = 0 }"
  lv() { "$@" --config "$conf" 2> >(grep -v -E 'WARNING: (Activation disabled|Logical volume .* not zeroed|This metadata update is NOT backed up)|leaked on' >&2); }
  lv pvcreate -q "$LOOP"
  lv vgcreate -q -s 4M gvg "$LOOP"
  lv lvcreate -q -Zn -n xfs -L 160M gvg
  lv lvcreate -q -Zn -n pad -L 8M gvg
  lv lvextend -q -L 320M gvg/xfs
  lv lvs --reportformat json --segments -o lv_name,seg_start_pe,seg_size_pe,seg_pe_ranges --units s gvg > lvs.json
  lv pvs --reportformat json -o pv_name,pe_start --units s > pvs.json
  lv vgs --reportformat json -o vg_name,vg_extent_size --units s > vgs.json
  # The table, from the reports: each segment of LV xfs is a linear
  # mapping of its PE range on the PV.
  local ext pestart
  ext=$(lv vgs --noheadings --nosuffix --units s -o vg_extent_size gvg | tr -d ' ')
  pestart=$(lv pvs --noheadings --nosuffix --units s -o pe_start "$LOOP" | tr -d ' ')
  lv lvs --noheadings --segments -o seg_start_pe,seg_size_pe,seg_pe_ranges gvg/xfs |
    awk -v ext="$ext" -v pe="$pestart" '{
      n = split($3, r, ":"); split(r[n], fl, "-")
      if (fl[2] - fl[1] + 1 != $2) { print "bad segment " $0 > "/dev/stderr"; exit 1 }
      printf "%s%d:%d:%d", (NR > 1 ? "," : ""), $1 * ext, $2 * ext, pe + fl[1] * ext
    } END { print "" }' > dm-table.txt
  losetup -d "$LOOP"
  LOOP=""
  # XFS, written into the LV's segments.
  truncate -s 320M xfs.img
  mkfs.xfs -q -f -L gxfs xfs.img
  local s l o
  for seg in $(tr ',' ' ' < dm-table.txt); do
    IFS=: read -r s l o <<< "$seg"
    dd if=xfs.img of=lvm.raw bs=1M iflag=skip_bytes,count_bytes oflag=seek_bytes skip=$((s * 512)) count=$((l * 512)) \
      seek=$(((2048 + o) * 512)) conv=notrunc,sparse status=none
  done
  rm -f xfs.img
}

if [ ! -f "$cache/.done" ]; then
  for tool in losetup pvcreate vgcreate lvcreate lvextend lvs pvs vgs mkntfs mkfs.xfs sfdisk qemu-img qemu-system-x86_64 ldd strings cpio; do
    command -v "$tool" >/dev/null || { log "$tool missing (run scripts/deps.sh)"; exit 1; }
  done
  [ "$(id -u)" -eq 0 ] || { log "needs root (loop devices)"; exit 1; }
  find "$(dirname "$cache")" -maxdepth 1 -name 'gdirty-*' ! -name '*.lock' ! -name "gdirty-$hash" -mtime +7 -exec rm -rf {} + 2>/dev/null || true
  rm -rf "$cache"
  mkdir -p "$cache"
  cd "$cache"
  cp "$gd/vmlinuz" vmlinuz
  echo "$kver" > kernel-version
  log "initramfs"
  initramfs
  log "disks"
  ntfs_disk
  lvm_disk
  log "prep boot (the guest writes both trees)"
  boot prep vdb "$(cat dm-table.txt)" console-prep.log ntfs.raw lvm.raw
  grep -q '=== DONE prep ===' console-prep.log && ! grep -q '=== FAIL' console-prep.log ||
    { log "prep boot failed:"; cat console-prep.log >&2; exit 1; }
  qemu-img convert -f raw -O vmdk lvm.raw base.vmdk
  rm -f lvm.raw
  touch .done
fi
if [ "$(readlink "$out" 2>/dev/null)" != "$cache" ]; then
  rm -rf "$out"
  ln -s "$cache" "$out"
fi

if [ "${1:-}" = run ]; then
  work=$2 lvmdisk=$3
  shift 3
  boot "$work" "$lvmdisk" "$(cat "$cache/dm-table.txt")" /dev/stdout "$@"
fi
