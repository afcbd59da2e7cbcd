#!/usr/bin/env bash
# Builds the initramfs of the live dirty-poll tests (dirty/live, cmd/vmscope
# live tests, bench/running.sh): busybox-static, the virtio-blk module chain
# of the Debian cloud kernel that testdata/guest unpacks (built when
# missing), /init (testdata/livedirty/init.sh: a workload in rounds, each
# announced on the console, and a background writer) and ckpt
# (testdata/livedirty/ckpt: EXT4_IOC_CHECKPOINT).
#
# Output, in a cache folder named by the hash of this script, init.sh and the
# kernel version, linked as testdata/out-livedirty (git-ignored):
#   vmlinuz initrd.gz kernel-version
set -euo pipefail
export LC_ALL=C
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
PATH=$PATH:/usr/local/go/bin:/usr/sbin:/sbin

bash "$repo/testdata/guest/build.sh"
kdir=$(readlink -f "$repo/testdata/out-guest")
kver=$(cat "$kdir/kernel-version")
hash=$( (cat "$here/build.sh" "$here/init.sh" "$here/ckpt/main.go"; echo "$kver") | sha256sum | cut -c1-16)
cache=${VMSCOPE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vmscope}/livedirty-$hash
out=$here/../out-livedirty
mkdir -p "$(dirname "$cache")"
exec 9>"$cache.lock"
flock 9

if [ ! -f "$cache/.done" ]; then
  find "$(dirname "$cache")" -maxdepth 1 -name 'livedirty-*' ! -name '*.lock' ! -name "livedirty-$hash" -mtime +7 -exec rm -rf {} + 2>/dev/null || true
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
  (cd "$repo" && CGO_ENABLED=0 go build -trimpath -o "$root/bin/ckpt" ./testdata/livedirty/ckpt)
  moddir=$kdir/kernel/lib/modules/$kver/kernel/drivers
  for m in virtio/virtio_ring virtio/virtio virtio/virtio_pci_legacy_dev virtio/virtio_pci_modern_dev virtio/virtio_pci block/virtio_blk; do
    cp "$moddir/$m.ko" "$root/lib/modules/"
  done
  (cd "$root" && find . -print0 | sort -z | cpio --null -o -H newc --quiet -R 0:0) | gzip -9 > "$cache/initrd.gz"
  rm -rf "$root"
  cp "$kdir/vmlinuz" "$cache/vmlinuz"
  echo "$kver" > "$cache/kernel-version"
  touch "$cache/.done"
fi
if [ "$(readlink "$out" 2>/dev/null)" != "$cache" ]; then
  rm -rf "$out"
  ln -s "$cache" "$out"
fi
