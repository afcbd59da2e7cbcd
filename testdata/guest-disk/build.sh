#!/usr/bin/env bash
# Builds the initramfs of the guest-disk fixture: busybox-static, the
# virtio-blk module chain of the Debian cloud kernel that testdata/guest
# unpacks (testdata/guest/build.sh builds it when missing), and /init
# (testdata/guest-disk/init.sh: scripted filesystem workloads).
#
# Output, in a cache folder named by the hash of this script, init.sh and the
# kernel version, linked as testdata/out-guest-disk (git-ignored):
#   vmlinuz initrd.gz kernel-version   (the initramfs holds testdata/guest-disk/lister)
#   crash-before.img crash.img crash-fsck.img   see crash_fixture below
#   fc-crash-before.img fc-crash.img fc-crash-recovered.img   see fc_crash_fixture
# The images and boots are made by the tests (dirty/guest_test.go), or by
# hand:  bash testdata/guest-disk/build.sh run WORK DISK...   (WORK 1|2|crash|fccrash|recover;
# DISK a .qcow2 or a raw file; QEMU TCG, the console goes to stdout).
set -euo pipefail
export LC_ALL=C
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
PATH=$PATH:/usr/local/go/bin:/usr/sbin:/sbin

bash "$repo/testdata/guest/build.sh"
kdir=$(readlink -f "$repo/testdata/out-guest")
kver=$(cat "$kdir/kernel-version")
hash=$( (cat "$here/build.sh" "$here/init.sh" "$here/lister/main.go"; echo "$kver") | sha256sum | cut -c1-16)
cache=${VMSCOPE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vmscope}/guest-disk-$hash
out=$here/../out-guest-disk
mkdir -p "$(dirname "$cache")"
# One build at a time per cache folder (parallel checkouts share the cache).
exec 9>"$cache.lock"
flock 9

log() { printf 'guest-disk: %s\n' "$*" >&2; }

# The crash fixture: an ext4 filesystem (whole disk, 4 KiB blocks) that the
# guest changed with `mount -o commit=1` and the crash workload, then QEMU
# killed once the transactions were committed: the journal needs recovery.
#   crash-before.img  the filesystem before the boot
#   crash.img         after the crash (needs_recovery set)
#   crash-fsck.img    crash.img after `e2fsck -fy` (journal recovered by e2fsprogs):
#                     the reference for an in-memory replay
crash_fixture() {
  crash_boot crash ""
}

# The fast-commit crash fixture: the same tree on a filesystem with
# fast_commit, changed by the fccrash workload (fsync'ed writes, no full
# commit after them), then QEMU killed: fc-crash-before.img, fc-crash.img,
# and fc-crash-recovered.img, the guest kernel's own recovery (a boot that
# mounts the crashed filesystem and unmounts it cleanly: the kernel replays
# fast commits; e2fsck 1.47.0 fails on them).
fc_crash_fixture() {
  crash_boot fccrash "-O fast_commit" fc-
  cp --sparse=always "$cache/fc-crash.img" "$cache/fc-crash-recovered.img"
  log "recover boot"
  timeout 300 qemu-system-x86_64 -accel tcg -m 256 -smp 1 -nographic -display none -no-reboot \
    -kernel "$cache/vmlinuz" -initrd "$cache/initrd.gz" \
    -append "console=ttyS0 quiet panic=-1 vmscope.work=recover" -serial "file:$cache/console-recover.log" \
    -monitor none -net none -drive "file=$cache/fc-crash-recovered.img,format=raw,if=virtio"
  grep -q '=== DONE recover ===' "$cache/console-recover.log" || { log "recover boot failed:"; cat "$cache/console-recover.log" >&2; exit 1; }
  e2fsck -fn "$cache/fc-crash-recovered.img" > "$cache/fc-e2fsck.log" 2>&1 || { log "the recovered filesystem has errors"; cat "$cache/fc-e2fsck.log" >&2; exit 1; }
}

# crash_boot WORK MKFS_OPTIONS [PREFIX] builds PREFIX{crash-before,crash}.img,
# and crash-fsck.img without a prefix.
crash_boot() {
  local work=$1 mkfsopt=$2 p=${3:-}
  local t=$cache/crash-tree
  mkdir -p "$t"/{etc,data,olddir/sub,unrelated,w2,newtree}
  echo "127.0.0.1 localhost" > "$t/etc/hosts"
  echo "root:x:0:0:root:/root:/bin/sh" > "$t/etc/passwd"
  seq 1 3000 | sed 's/^/log line /' > "$t/data/append.log"
  head -c 65536 /dev/urandom > "$t/data/inplace.bin"
  seq 1 4000 > "$t/data/trunc.txt"
  head -c 4096 /dev/urandom > "$t/data/sparse.img"
  truncate -s 1M "$t/data/sparse.img"
  echo renamed > "$t/data/old-name.txt"
  echo linked > "$t/data/linkme.txt"
  echo deleted > "$t/data/delete-me.txt"
  echo a > "$t/olddir/a.txt"; echo b > "$t/olddir/sub/b.txt"
  head -c 4194304 /dev/urandom > "$t/big.bin"
  for i in $(seq 0 299); do printf 'unrelated file %d\n' "$i" > "$t/unrelated/f$(printf %03d "$i")"; done
  echo edit > "$t/w2/edit.txt"; echo rm > "$t/w2/rm.txt"
  ln -s etc/hosts "$t/lnk"
  # shellcheck disable=SC2086
  mkfs.ext4 -q -F -b 4096 -E root_owner=0:0 $mkfsopt -d "$t" "$cache/${p}crash-before.img" 48M
  rm -rf "$t"
  cp --sparse=always "$cache/${p}crash-before.img" "$cache/${p}crash.img"
  log "$work boot"
  qemu-system-x86_64 -accel tcg -m 256 -smp 1 -nographic -display none -no-reboot \
    -kernel "$cache/vmlinuz" -initrd "$cache/initrd.gz" \
    -append "console=ttyS0 quiet panic=-1 vmscope.work=$work" -serial "file:$cache/console-$work.log" \
    -monitor none -net none -drive "file=$cache/${p}crash.img,format=raw,if=virtio" &
  local pid=$! i=0
  until grep -q '=== CRASH-READY ===' "$cache/console-$work.log" 2>/dev/null; do
    if grep -q '=== FAIL' "$cache/console-$work.log" 2>/dev/null || ! kill -0 "$pid" 2>/dev/null || [ $i -ge 1500 ]; then
      kill -9 "$pid" 2>/dev/null || true
      log "$work boot failed:"; cat "$cache/console-$work.log" >&2; exit 1
    fi
    sleep 0.2; i=$((i+1))
  done
  kill -9 "$pid"; wait "$pid" 2>/dev/null || true
  dumpe2fs -h "$cache/${p}crash.img" 2>/dev/null | grep -q needs_recovery || { log "${p}crash.img does not need recovery"; exit 1; }
  [ -z "$p" ] || return 0
  cp --sparse=always "$cache/crash.img" "$cache/crash-fsck.img"
  local rc=0
  e2fsck -fy "$cache/crash-fsck.img" > "$cache/e2fsck.log" 2>&1 || rc=$?
  [ $rc -le 1 ] || { log "e2fsck exit $rc"; cat "$cache/e2fsck.log" >&2; exit 1; }
}

if [ ! -f "$cache/.done" ]; then
  find "$(dirname "$cache")" -maxdepth 1 -name 'guest-disk-*' ! -name '*.lock' ! -name "guest-disk-$hash" -mtime +7 -exec rm -rf {} + 2>/dev/null || true
  rm -rf "$cache"
  mkdir -p "$cache"
  root=$cache/initramfs
  mkdir -p "$root"/{bin,sbin,dev,proc,sys,tmp,mnt,lib/modules}
  cp /bin/busybox "$root/bin/busybox"
  for applet in $(/bin/busybox --list); do
    [ -e "$root/bin/$applet" ] || ln -s busybox "$root/bin/$applet"
  done
  cp "$here/init.sh" "$root/init"
  chmod 755 "$root/init"
  (cd "$repo" && CGO_ENABLED=0 go build -trimpath -o "$root/bin/lister" ./testdata/guest-disk/lister)
  moddir=$kdir/kernel/lib/modules/$kver/kernel/drivers
  for m in virtio/virtio_ring virtio/virtio virtio/virtio_pci_legacy_dev virtio/virtio_pci_modern_dev virtio/virtio_pci block/virtio_blk; do
    cp "$moddir/$m.ko" "$root/lib/modules/"
  done
  (cd "$root" && find . -print0 | sort -z | cpio --null -o -H newc --quiet -R 0:0) | gzip -9 > "$cache/initrd.gz"
  rm -rf "$root"
  cp "$kdir/vmlinuz" "$cache/vmlinuz"
  echo "$kver" > "$cache/kernel-version"
  crash_fixture
  fc_crash_fixture
  touch "$cache/.done"
fi
if [ "$(readlink "$out" 2>/dev/null)" != "$cache" ]; then
  rm -rf "$out"
  ln -s "$cache" "$out"
fi

if [ "${1:-}" = run ]; then
  work=$2; shift 2
  drives=()
  for d in "$@"; do
    fmt=raw; case $d in *.qcow2) fmt=qcow2;; esac
    drives+=(-drive "file=$d,format=$fmt,if=virtio")
  done
  exec qemu-system-x86_64 -accel tcg -m 256 -smp 1 -nographic -display none -no-reboot \
    -kernel "$cache/vmlinuz" -initrd "$cache/initrd.gz" \
    -append "console=ttyS0 quiet panic=-1 vmscope.work=$work" -monitor none -net none "${drives[@]}"
fi
