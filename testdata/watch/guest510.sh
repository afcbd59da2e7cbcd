#!/usr/bin/env bash
# Builds the watch fixture on the previous Debian stable kernel (bullseye's
# linux-image-cloud-amd64, 5.10): the kernel package is fetched with
# apt-get from bullseye's archive through a private sources list and
# package lists (the system's apt state is not touched), and the watch
# fixture's initramfs (testdata/watch/build.sh: busybox, init.sh, actor)
# gets that kernel's virtio-blk modules instead of the current kernel's.
# The data disk is the watch fixture's.
#
# Output, in a cache folder named by the hash of this script and of the
# watch fixture's files, linked as testdata/out-watch510 (git-ignored):
#   vmlinuz initrd.gz kernel-version data.img System.map config
# Usage: bash testdata/watch/guest510.sh
set -euo pipefail
export LC_ALL=C
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
PATH=$PATH:/usr/local/go/bin:/usr/sbin:/sbin

bash "$here/build.sh"
wdir=$(readlink -f "$repo/testdata/out-watch")
hash=$( (cat "$here/guest510.sh"; basename "$wdir") | sha256sum | cut -c1-16)
cache=${VMSCOPE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vmscope}/watch510-$hash
out=$here/../out-watch510
mkdir -p "$(dirname "$cache")"
exec 9>"$cache.lock"
flock 9

if [ ! -f "$cache/.done" ]; then
  rm -rf "$cache"
  mkdir -p "$cache/apt/lists/partial" "$cache/apt/archives/partial" "$cache/dl"
  echo "deb http://deb.debian.org/debian bullseye main" > "$cache/apt/sources.list"
  apt=(-o Dir::Etc::SourceList="$cache/apt/sources.list" -o Dir::Etc::SourceParts=/dev/null
    -o Dir::State::Lists="$cache/apt/lists" -o Dir::Cache::Archives="$cache/apt/archives"
    -o Debug::NoLocking=1 -q)
  apt-get "${apt[@]}" update >&2
  # the metapackage names the ABI's image package
  kpkg=$(apt-cache "${apt[@]}" depends linux-image-cloud-amd64 | sed -n 's/^ *Depends: \(linux-image-[0-9].*-cloud-amd64\)$/\1/p' | head -1)
  [ -n "$kpkg" ] || { echo "guest510: no linux-image-*-cloud-amd64 in bullseye" >&2; exit 1; }
  (cd "$cache/dl" && apt-get "${apt[@]}" download "$kpkg" 2>&1 | grep -v '^W: Download is performed unsandboxed' >&2 || true)
  dpkg-deb -x "$cache"/dl/"$kpkg"_*.deb "$cache/kernel"
  kver=${kpkg#linux-image-}
  root=$cache/initramfs
  mkdir -p "$root"
  (cd "$root" && gzip -dc "$wdir/initrd.gz" | cpio -id --quiet)
  rm -f "$root"/lib/modules/*.ko
  moddir=$cache/kernel/lib/modules/$kver/kernel/drivers
  for m in virtio/virtio_ring virtio/virtio virtio/virtio_pci block/virtio_blk; do
    cp "$moddir/$m.ko" "$root/lib/modules/"
  done
  (cd "$root" && find . -print0 | sort -z | cpio --null -o -H newc --quiet -R 0:0) | gzip -9 > "$cache/initrd.gz"
  cp "$cache/kernel/boot/vmlinuz-$kver" "$cache/vmlinuz"
  cp "$cache/kernel/boot/config-$kver" "$cache/config"
  cp "$cache/kernel/boot/System.map-$kver" "$cache/System.map"
  echo "$kver" > "$cache/kernel-version"
  cp "$wdir/data.img" "$cache/data.img"
  rm -rf "$root" "$cache/kernel" "$cache/dl" "$cache/apt"
  touch "$cache/.done"
fi
if [ "$(readlink "$out" 2>/dev/null)" != "$cache" ]; then
  rm -rf "$out"
  ln -s "$cache" "$out"
fi
