#!/usr/bin/env bash
# Builds the XFS fixture whose inode numbers need more than 32 bits into
# testdata/out-xfs-ino64 (git-ignored; a link to
# ~/.cache/vmscope/xfs-ino64-HASH, named by the hash of this script):
#
#   xfs-ino64.qcow2  a 3 TiB v5 XFS (4 AGs of 768 GiB: AG 2 and 3 hold inode
#                    numbers above 2^32) populated through a loop mount with
#                    the kernel's inode64 allocator: directories d1..d8 spread
#                    over the AGs, each with a file; converted from the sparse
#                    raw file to qcow2 (a few MiB)
#   inodes.txt       the kernel's view: find -printf '%i %y %p' of every entry
#
# When the loop mount fails, loop-skipped.txt says why (the tests skip, or
# fail under CI).
set -euo pipefail
export LC_ALL=C
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$(dirname "$here")")
PATH=$PATH:/usr/sbin:/sbin

hash=$(sha256sum < "$here/ino64.sh" | cut -c1-16)
cache=${VMSCOPE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vmscope}/xfs-ino64-$hash
out=$repo/testdata/out-xfs-ino64
mkdir -p "$(dirname "$cache")"
exec 9>"$cache.lock"
flock 9
if [ -f "$cache/.done" ]; then
  [ "$(readlink "$out" 2>/dev/null)" = "$cache" ] || { rm -rf "$out"; ln -s "$cache" "$out"; }
  exit 0
fi
for tool in mkfs.xfs qemu-img mount; do
  command -v "$tool" >/dev/null || { echo "xfs/ino64.sh: $tool missing (run scripts/deps.sh)" >&2; exit 1; }
done
find "$(dirname "$cache")" -maxdepth 1 -name 'xfs-ino64-*' ! -name "xfs-ino64-$hash" ! -name '*.lock' -mtime +7 -exec rm -rf {} + 2>/dev/null || true
rm -rf "$cache"
mkdir -p "$cache"
cd "$cache"
log() { printf 'xfs ino64 fixture: %s\n' "$*" >&2; }

log "mkfs.xfs on a sparse 3 TiB file"
truncate -s 3T big.raw
# No discard (-K), a small log: only the AG headers and the log are written.
mkfs.xfs -q -f -K -m crc=1 -d agcount=4 -l size=64m -L ino64 big.raw
mnt=$(mktemp -d)
if ! mount -o loop,inode64 big.raw "$mnt" 2>loop-skipped.txt; then
  echo "loop mount of big.raw failed (needs root, loop devices and the xfs module)" >> loop-skipped.txt
  log "$(cat loop-skipped.txt)"
  rm -f big.raw
  rmdir "$mnt"
  ln -sfn "$cache" "$out.tmp" && mv -T "$out.tmp" "$out"
  touch .done
  exit 0
fi
rm -f loop-skipped.txt
trap 'umount "$mnt" 2>/dev/null || true; rmdir "$mnt" 2>/dev/null || true' EXIT
# inode64 spreads new directories over the AGs; files go to their
# directory's AG.
for i in 1 2 3 4 5 6 7 8; do
  mkdir "$mnt/d$i"
  printf 'file %d in an AG of its own\n' "$i" > "$mnt/d$i/f"
done
(cd "$mnt" && find . -printf '%i %y %p\n') | sort -k3 > inodes.txt
umount "$mnt"
trap - EXIT
rmdir "$mnt"
if ! awk '$1 > 4294967295 {n++} END {exit !n}' inodes.txt; then
  echo "xfs/ino64.sh: no inode number above 2^32:" >&2
  cat inodes.txt >&2
  exit 1
fi
log "qcow2"
qemu-img convert -f raw -O qcow2 big.raw xfs-ino64.qcow2
rm -f big.raw
chmod a-w xfs-ino64.qcow2
touch .done
ln -sfn "$cache" "$out.tmp" && mv -T "$out.tmp" "$out"
log "done"
