#!/usr/bin/env bash
# Builds the watch fixture: the initramfs of testdata/guest (unpacked from
# testdata/out-guest/initrd.gz, which testdata/guest/build.sh builds) with
# /init replaced by testdata/watch/init.sh, the static helper
# testdata/watch/actor, and the virtio-blk module chain of the same Debian
# kernel package; and the ext4 data disk the scenario works on, made with
# mkfs.ext4 -d (files owned by uid 0, 1000 and 1001).
#
# Output, in a cache folder named by the hash of this script, init.sh,
# actor/main.go and the kernel version, linked as testdata/out-watch
# (git-ignored):
#   vmlinuz initrd.gz kernel-version data.img
# Tests copy data.img before they boot it (the scenario writes to it).
# Usage: bash testdata/watch/build.sh
set -euo pipefail
export LC_ALL=C
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
PATH=$PATH:/usr/local/go/bin:/usr/sbin:/sbin

bash "$repo/testdata/guest/build.sh"
kdir=$(readlink -f "$repo/testdata/out-guest")
kver=$(cat "$kdir/kernel-version")
hash=$( (cat "$here/build.sh" "$here/init.sh" "$here/actor/main.go"; echo "$kver") | sha256sum | cut -c1-16)
cache=${VMSCOPE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vmscope}/watch-$hash
out=$here/../out-watch
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
  (cd "$repo" && CGO_ENABLED=0 go build -trimpath -o "$root/bin/actor" ./testdata/watch/actor)
  moddir=$kdir/kernel/lib/modules/$kver/kernel/drivers
  for m in virtio/virtio_ring virtio/virtio virtio/virtio_pci_legacy_dev virtio/virtio_pci_modern_dev virtio/virtio_pci block/virtio_blk; do
    cp "$moddir/$m.ko" "$root/lib/modules/"
  done
  (cd "$root" && find . -print0 | sort -z | cpio --null -o -H newc --quiet -R 0:0) | gzip -9 > "$cache/initrd.gz"
  rm -rf "$root"
  cp "$kdir/vmlinuz" "$cache/vmlinuz"
  echo "$kver" > "$cache/kernel-version"

  t=$cache/tree
  mkdir -p "$t/watched" "$t/bulk"
  for f in secret config notes moveme victim cold; do printf '%s: watched file content\n' "$f" > "$t/watched/$f.txt"; done
  chown 1000:1000 "$t/watched/secret.txt" "$t/watched/notes.txt"
  chown 1001:1001 "$t/watched/config.txt"
  chmod 0640 "$t/watched/secret.txt"
  chmod 0600 "$t/watched/config.txt"
  for i in $(seq 0 199); do
    f=$t/bulk/$(printf 'f%03d' "$i")
    printf 'bulk file %d\n' "$i" > "$f"
    case $((i % 3)) in 1) chown 1000:1000 "$f";; 2) chown 1001:1001 "$f";; esac
    chmod 0666 "$f"
  done
  chmod 1777 "$t/bulk"
  chmod 0777 "$t/watched"
  mkfs.ext4 -q -F -b 4096 -E root_owner=0:0 -d "$t" "$cache/data.img" 32M
  rm -rf "$t"
  touch "$cache/.done"
fi
if [ "$(readlink "$out" 2>/dev/null)" != "$cache" ]; then
  rm -rf "$out"
  ln -s "$cache" "$out"
fi
