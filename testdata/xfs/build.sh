#!/usr/bin/env bash
# Builds the XFS fixtures with the real tools into testdata/out-xfs
# (git-ignored; a link to ~/.cache/vmscope/xfs-HASH, named by the hash of
# this script and of the tree generator).
#
#   tree/            the source tree (gentree -kind small)
#   xfs-proto.img    v5 (crc, bigtime, nrext64, reflink) made by mkfs.xfs -p from a
#                    protofile this script writes from tree/ (no kernel needed;
#                    protofiles cannot hold names with spaces or colons, hard links
#                    or holes: those are left out)
#   xfs-v4.img       v4 (crc=0) from the same protofile
#   xfs.img          v5 populated through a loop mount (needs root and the xfs module):
#                    tree/ under /tree (cp -a), and under /x: a B+tree data fork of
#                    depth >= 2 (fpunch every other block), holes, unwritten extents
#                    over stale data, reflinked clones, local and remote symlinks,
#                    shortform/block/leaf/node directories, bigtime dates, devices
#   manifest.txt     the kernel's view of xfs.img: find -printf of every file, one line each
#   sums.txt         sha256sum of every regular file of xfs.img, through the kernel
#   blockuse.txt     xfs_db -r blockget -n / blockuse -n of every block of xfs.img
#   xfs-changed.img  xfs.img changed through a loop mount (changes.txt: the changed paths)
#   overlay.qcow2    qcow2 overlay on the raw xfs.img holding exactly the blocks that
#                    differ in xfs-changed.img (qemu-io writes, testdata/blkdiff)
#   xfs-dirtylog.img a copy of a mounted filesystem after sync: its log needs recovery
#   xfs-rt.img       v5 with a realtime section (rt.img) holding /rtfile (with a loop mount)
# When the loop mount fails, the images that need it are left out and
# loop-skipped.txt says why (the tests skip them, or fail under CI).
set -euo pipefail
export LC_ALL=C
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$(dirname "$here")")
PATH=$PATH:/usr/sbin:/sbin

hash=$(cat "$here/build.sh" "$repo/testdata/gentree/main.go" "$repo/testdata/blkdiff/main.go" | sha256sum | cut -c1-16)
cache=${VMSCOPE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vmscope}/xfs-$hash
out=$repo/testdata/out-xfs
mkdir -p "$(dirname "$cache")"
exec 9>"$cache.lock"
flock 9
if [ -f "$cache/.done" ]; then
  [ "$(readlink "$out" 2>/dev/null)" = "$cache" ] || { rm -rf "$out"; ln -s "$cache" "$out"; }
  exit 0
fi
for tool in mkfs.xfs xfs_db xfs_io qemu-img qemu-io setfattr losetup; do
  command -v "$tool" >/dev/null || { echo "xfs/build.sh: $tool missing (run scripts/deps.sh)" >&2; exit 1; }
done
find "$(dirname "$cache")" -maxdepth 1 -name 'xfs-*' ! -name "xfs-$hash" ! -name '*.lock' -mtime +7 -exec rm -rf {} + 2>/dev/null || true
rm -rf "$cache"
mkdir -p "$cache"
cd "$cache"
log() { printf 'xfs fixtures: %s\n' "$*" >&2; }
UUID=6a0e1d44-3b9c-4e2f-8a51-0c7d2e9f4b11

log "source tree"
(cd "$repo" && go run ./testdata/gentree -kind small "$cache/tree")

log "protofile"
# One line per file, depth first; names with spaces or colons are left out.
proto() { # proto DIR
  local d=$1 f name mode t
  for f in "$d"/* "$d"/.[!.]*; do
    [ -e "$f" ] || [ -L "$f" ] || continue
    name=${f##*/}
    case "$name" in *[[:space:]:]*) continue ;; esac
    mode=$(stat -c '%a' "$f")
    mode=$(printf '%03o' $((8#$mode & 8#777)))
    local su=- sg=-
    [ -u "$f" ] && su=u
    [ -g "$f" ] && sg=g
    local own
    own=$(stat -c '%u %g' "$f")
    if [ -L "$f" ]; then
      t=$(readlink "$f")
      case "$t" in *[[:space:]:]*|'') continue ;; esac
      echo "$name l$su$sg$mode $own $t"
    elif [ -d "$f" ]; then
      echo "$name d$su$sg$mode $own"
      proto "$f"
      echo '$'
    elif [ -p "$f" ]; then
      echo "$name p$su$sg$mode $own"
    elif [ -f "$f" ]; then
      echo "$name -$su$sg$mode $own $f"
    fi
  done
}
{
  echo dummy
  echo 0 0
  echo "d--755 0 0"
  proto "$cache/tree"
  echo '$'
} > proto.txt

log "xfs-proto.img"
truncate -s 300M xfs-proto.img
mkfs.xfs -q -f -L protofs -m uuid=$UUID,crc=1,reflink=1,bigtime=1 -i nrext64=1 -p proto.txt xfs-proto.img
log "xfs-v4.img"
truncate -s 300M xfs-v4.img
mkfs.xfs -q -f -L v4fs -m crc=0 -p proto.txt xfs-v4.img 2>/dev/null
log "xfs-rt.img"
truncate -s 300M xfs-rt.img
truncate -s 64M rt.img
mkfs.xfs -q -f -L rtfs -r rtdev=rt.img -p proto.txt xfs-rt.img
for i in xfs-proto.img xfs-v4.img xfs-rt.img; do xfs_db -r -c 'sb 0' -c 'print' "$i" > "${i%.img}.sb.txt"; done
xfs_db -r -c 'sb 0' -c 'print' xfs-proto.img > xfs-proto.sb.txt

mnt=$cache/mnt
mkdir -p "$mnt"
loop_ok=1
truncate -s 400M xfs.img
mkfs.xfs -q -f -L vmscopexfs -m uuid=$UUID,crc=1,reflink=1,bigtime=1 -i nrext64=1 xfs.img
if ! mount -o loop xfs.img "$mnt" 2>loop-skipped.txt; then
  loop_ok=0
  echo "loop mount of xfs.img failed (needs root, loop devices and the xfs module)" >> loop-skipped.txt
  log "$(cat loop-skipped.txt)"
  rm -f xfs.img
fi

if [ $loop_ok = 1 ]; then
  rm -f loop-skipped.txt
  trap 'umount "$mnt" 2>/dev/null || true' EXIT
  log "xfs.img: tree and special files"
  cp -a "$cache/tree" "$mnt/tree"
  x=$mnt/x
  mkdir -p "$x/dirs/sf" "$x/dirs/block" "$x/dirs/leaf" "$x/dirs/node" "$x/empty"
  for i in 1 2 3; do echo "sf $i" > "$x/dirs/sf/f$i"; done
  for i in $(seq 1 60); do echo "b $i" > "$x/dirs/block/entry-number-$i"; done
  for i in $(seq 1 400); do : > "$x/dirs/leaf/leaf-entry-name-$i"; done
  for i in $(seq 1 6000); do : > "$x/dirs/node/a-rather-long-file-name-for-the-node-directory-$i"; done
  echo hello > "$x/dirs/node/a-rather-long-file-name-for-the-node-directory-3000"
  # A B+tree data fork: 32 MiB of data with every other block punched out.
  head -c 33554432 /dev/urandom > "$x/btree"
  args=()
  for i in $(seq 0 2 8191); do args+=(-c "fpunch $((i * 4096)) 4096"); done
  xfs_io "${args[@]}" "$x/btree"
  # Holes: a sparse file with data in the middle and at its end.
  xfs_io -f -c 'truncate 10m' -c 'pwrite -S 0x61 4m 8k' -c 'pwrite -S 0x62 10236k 4k' "$x/holes" >/dev/null
  # Unwritten extents over stale data: blocks freed by a deleted file.
  head -c 4194304 /dev/urandom > "$x/stale"
  sync
  rm "$x/stale"
  sync
  xfs_io -f -c 'falloc 0 4m' -c 'pwrite -S 0x63 1m 12k' -c 'falloc 4m 1m' "$x/unwritten" >/dev/null
  xfs_io -f -c 'falloc -k 0 64k' "$x/unwritten-keep" >/dev/null
  # Reflinks: a whole clone and a partial one.
  head -c 1048576 /dev/urandom > "$x/reflink-src"
  cp --reflink=always "$x/reflink-src" "$x/reflink-clone"
  xfs_io -f -c 'pwrite -S 0x64 0 64k' -c "reflink $x/reflink-src 256k 64k 128k" "$x/reflink-part" >/dev/null
  cp --reflink=always "$x/btree" "$x/btree-clone"
  # Symlinks: local and remote (a target longer than the inode's literal area).
  ln -s short-target "$x/sym-local"
  ln -s "$(printf 'long/%.0s' $(seq 1 150))end" "$x/sym-remote"
  # Timestamps outside 1970-2038 (bigtime), nanoseconds.
  echo future > "$x/future"; touch -d '2300-06-01 12:00:00.123456789' "$x/future"
  echo past > "$x/past"; touch -d '1920-01-01 00:00:00.5' "$x/past"
  mknod "$x/chardev" c 1 3
  mknod "$x/blockdev" b 7 0
  mkfifo "$x/fifo"
  ln "$x/future" "$x/future-hardlink"
  # Extended attributes: one in the inode, one in remote attribute blocks.
  echo attrs > "$x/xattr"
  setfattr -n user.small -v tiny "$x/xattr"
  setfattr -n user.big -v "$(head -c 30000 /dev/zero | tr '\0' 'v')" "$x/xattr"
  echo "inline text" > "$x/small"
  : > "$x/emptyfile"
  sync
  log "manifest"
  (cd "$mnt" && find . -mindepth 1 -printf '%P\t%y\t%m\t%U\t%G\t%s\t%n\t%i\t%T@\t%l\n' | sort) > manifest.txt
  (cd "$mnt" && find . -type f -print0 | sort -z | xargs -0 sha256sum) > sums.txt
  umount "$mnt"
  trap - EXIT

  log "xfs_db references"
  eval "$(xfs_db -r -c 'sb 0' -c 'print agcount agblocks agblklog' xfs.img | sed 's/ = /=/')"
  cmds=(-c 'blockget -n')
  for ((ag = 0; ag < agcount; ag++)); do cmds+=(-c "fsblock $((ag << agblklog))" -c "blockuse -n -c $agblocks"); done
  xfs_db -r "${cmds[@]}" xfs.img > blockuse.txt
  for f in x/btree x/holes x/unwritten x/reflink-part x/dirs/node; do
    ino=$(awk -F'\t' -v p="$f" '$1 == p {print $8}' manifest.txt)
    xfs_db -r -c "inode $ino" -c 'print' -c 'bmap' xfs.img > "inode-${f//\//_}.txt"
  done
  xfs_db -r -c 'sb 0' -c 'print' xfs.img > xfs.sb.txt

  log "xfs-changed.img and its overlay"
  cp --sparse=always xfs.img xfs-changed.img
  mount -o loop xfs-changed.img "$mnt"
  trap 'umount "$mnt" 2>/dev/null || true' EXIT
  c=$mnt
  echo appended >> "$c/tree/etc/hostname" 2>/dev/null || echo appended >> "$c/x/small"
  xfs_io -c 'pwrite -S 0x77 8192 4096' "$c/x/btree" >/dev/null
  xfs_io -c 'pwrite -S 0x78 0 4096' "$c/x/reflink-clone" >/dev/null
  echo new > "$c/x/dirs/leaf/created-file"
  rm "$c/x/dirs/node/a-rather-long-file-name-for-the-node-directory-17"
  mv "$c/x/dirs/sf/f2" "$c/x/dirs/sf/f2-renamed"
  chmod 600 "$c/x/past"
  xfs_io -c 'pwrite -S 0x79 4m 4k' "$c/x/holes" >/dev/null
  sync
  umount "$mnt"
  trap - EXIT
  # The paths whose content, metadata or name changed (the ground truth).
  cat > changes.txt <<'LIST'
x/btree
x/reflink-clone
x/dirs/leaf/created-file
x/dirs/node/a-rather-long-file-name-for-the-node-directory-17
x/dirs/sf/f2-renamed
x/past
x/holes
LIST
  if [ -e "$cache/tree/etc/hostname" ]; then echo tree/etc/hostname >> changes.txt; else echo x/small >> changes.txt; fi
  (cd "$repo" && go run ./testdata/blkdiff "$cache/xfs.img" "$cache/xfs-changed.img" "$cache/chunks") > writes.txt
  qemu-img create -q -f qcow2 -b xfs.img -F raw overlay.qcow2
  qargs=()
  while read -r line; do qargs+=(-c "$line"); done < writes.txt
  (cd "$cache" && qemu-io -f qcow2 "${qargs[@]}" overlay.qcow2 >/dev/null)
  rm -rf chunks

  log "xfs-dirtylog.img"
  cp --sparse=always xfs.img dl-src.img
  mount -o loop dl-src.img "$mnt"
  trap 'umount "$mnt" 2>/dev/null || true' EXIT
  echo "written before the crash" > "$mnt/x/crash"
  mkdir "$mnt/x/crashdir"
  sync
  cp --sparse=always dl-src.img xfs-dirtylog.img
  umount "$mnt"
  trap - EXIT
  rm -f dl-src.img
  xfs_repair -n xfs-dirtylog.img > dirtylog-repair.txt 2>&1 || true

  log "xfs-rt.img: a realtime file"
  rtloop=$(losetup --show -f rt.img)
  if mount -o loop,rtdev="$rtloop" xfs-rt.img "$mnt"; then
    xfs_io -f -c 'chattr +r' -c 'pwrite -S 0x72 0 64k' "$mnt/rtfile" >/dev/null
    echo "on the data device" > "$mnt/datafile"
    umount "$mnt"
  else
    echo "mount of xfs-rt.img with its realtime device failed" >> rt-skipped.txt
  fi
  losetup -d "$rtloop"
  xfs_db -r -c 'sb 0' -c 'print' xfs-rt.img > xfs-rt.sb.txt
fi
rmdir "$mnt" 2>/dev/null || true
touch .done
[ "$(readlink "$out" 2>/dev/null)" = "$cache" ] || { rm -rf "$out"; ln -s "$cache" "$out"; }
log "done"
