#!/usr/bin/env bash
# Builds the injection fixture: the initramfs of testdata/guest (unpacked
# from testdata/out-guest/initrd.gz) with /init replaced by
# testdata/inject/init.sh, the static programs dummy and strict (this
# folder's C, built with Debian's gcc -static; midway, a dummy that exits
# or execs once inject borrows it), vmscope_rootkit.ko of
# testdata/rootkit, and the virtio-blk module chain of the same kernel; and
# the ext4 data disk the guest mounts read-only (mkfs.ext4 -d: known files
# and directories, owners 0/1000/1001, a symlink, a 1,000-entry directory,
# a 10 MiB file, a 256 KiB one, and vmscope_hidden_data, which the rootkit's ftrace mode
# hides from getdents64).
#
# Output, in a cache folder named by the hash of this folder's files and
# the guest and rootkit fixtures, linked as testdata/out-inject
# (git-ignored):  vmlinuz initrd.gz kernel-version data.img
# Usage: bash testdata/inject/build.sh
set -euo pipefail
export LC_ALL=C
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
PATH=$PATH:/usr/local/go/bin:/usr/sbin:/sbin

bash "$repo/testdata/guest/build.sh"
bash "$repo/testdata/rootkit/build.sh"
kdir=$(readlink -f "$repo/testdata/out-guest")
rk=$(readlink -f "$repo/testdata/out-rootkit")
kver=$(cat "$kdir/kernel-version")
hash=$( (cat "$here/build.sh" "$here/init.sh" "$here/dummy.c" "$here/strict.c" "$here/midway.c"; echo "$kver"
  sha256sum < "$kdir/initrd.gz"; sha256sum < "$rk/vmscope_rootkit.ko") | sha256sum | cut -c1-16)
cache=${VMSCOPE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vmscope}/inject-$hash
out=$repo/testdata/out-inject
mkdir -p "$(dirname "$cache")"
exec 9>"$cache.lock"
flock 9

if [ ! -f "$cache/.done" ]; then
  rm -rf "$cache"
  mkdir -p "$cache"
  root=$cache/initramfs
  mkdir -p "$root"
  (cd "$root" && gzip -dc "$kdir/initrd.gz" | cpio -id --quiet)
  mkdir -p "$root/lib/modules" "$root/mnt"
  cp "$here/init.sh" "$root/init"
  chmod 755 "$root/init"
  gcc -O2 -static -o "$root/bin/dummy" "$here/dummy.c"
  gcc -O2 -static -o "$root/bin/strict" "$here/strict.c"
  gcc -O2 -static -pthread -o "$root/bin/midway" "$here/midway.c"
  cp "$rk/vmscope_rootkit.ko" "$root/lib/modules/"
  moddir=$kdir/kernel/lib/modules/$kver/kernel/drivers
  for m in virtio/virtio_ring virtio/virtio virtio/virtio_pci_legacy_dev virtio/virtio_pci_modern_dev virtio/virtio_pci block/virtio_blk; do
    cp "$moddir/$m.ko" "$root/lib/modules/"
  done
  (cd "$root" && find . -print0 | sort -z | cpio --null -o -H newc --quiet -R 0:0) | gzip -9 > "$cache/initrd.gz"
  rm -rf "$root"
  cp "$kdir/vmlinuz" "$cache/vmlinuz"
  echo "$kver" > "$cache/kernel-version"

  t=$cache/tree
  k=$t/known
  mkdir -p "$k/sub" "$t/many"
  printf 'hello from the inject fixture\n' > "$k/hello.txt"
  printf 'owned by 1000, mode 0640\n' > "$k/owned.txt"
  chown 1000:1001 "$k/owned.txt"
  chmod 0640 "$k/owned.txt"
  : > "$k/empty"
  printf 'nested file\n' > "$k/sub/nested.txt"
  chmod 0750 "$k/sub"
  ln -s hello.txt "$k/link"
  printf 'the rootkit hides this name from getdents64\n' > "$t/vmscope_hidden_data"
  for i in $(seq 0 999); do : > "$t/many/$(printf 'entry%04d' "$i")"; done
  (yes 'vmscope inject: ten mebibytes of known content for cat' || true) | head -c 10485760 > "$t/big.bin"
  (yes 'vmscope inject: 256 KiB for cat under protect full' || true) | head -c 262144 > "$t/mid.bin"
  touch -d '2024-01-02 03:04:05' "$k/hello.txt" "$k/owned.txt" "$k/empty" "$k/sub/nested.txt" "$k/sub" "$t/big.bin"
  mkfs.ext4 -q -F -b 4096 -E root_owner=0:0 -d "$t" "$cache/data.img" 64M
  rm -rf "$t"
  touch "$cache/.done"
fi
if [ "$(readlink "$out" 2>/dev/null)" != "$cache" ]; then
  rm -rf "$out"
  ln -s "$cache" "$out"
fi
