#!/usr/bin/env bash
# Builds the NTFS fixtures with the real tools into testdata/out-ntfs
# (git-ignored, a link to ~/.cache/vmscope/ntfs-HASH, cached by the hash of
# this script): mkntfs on a file, populated through an ntfs-3g FUSE mount.
#
#   tree/               the source tree (the reference for names and bytes)
#   ntfs.img            NTFS (4 KiB clusters) holding tree/ plus what only NTFS has:
#                       alternate data streams (streams_interface=windows), a compressed
#                       directory (system.ntfs_attrib_be 0x800), sparse files, hard links,
#                       a directory of 3000 entries ($I30 index allocation), an Interix symlink
#                       (ntfs-3g's default) and a reparse-point symlink, a file of 150 hard links
#                       (attribute list), a timestomped file (touch -d)
#   ntfs.qcow2          qemu-img convert of ntfs.img
#   ntfs-changed.img    a copy of ntfs.img changed through an ntfs-3g mount (changed.txt lists
#                       the changed paths, streams as path:stream)
#   ntfs-overlay.qcow2  qcow2 overlay on ntfs.qcow2 holding exactly the blocks that differ
#                       (testdata/blkdiff + qemu-io)
#   ntfs-dirty.img      ntfs.img with its $Volume marked dirty by ntfs-3g's own tools
#   ntfsls.txt fls.txt  ntfsls -R -a and fls -r -p of ntfs.img (references)
set -euo pipefail
export LC_ALL=C TZ=UTC
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
PATH=$PATH:/usr/sbin:/sbin

hash=$(cat "$here/build.sh" "$repo/testdata/blkdiff/main.go" | sha256sum | cut -c1-16)
cache=${VMSCOPE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vmscope}/ntfs-$hash
out=$repo/testdata/out-ntfs
mkdir -p "$(dirname "$cache")"
exec 9>"$cache.lock"
flock 9
if [ -f "$cache/.done" ]; then
  if [ "$(readlink "$out" 2>/dev/null)" != "$cache" ]; then
    rm -rf "$out"
    ln -s "$cache" "$out"
  fi
  exit 0
fi
for tool in mkntfs ntfs-3g ntfsls ntfscat ntfsresize ntfsinfo setfattr iconv qemu-img qemu-io fls; do
  command -v "$tool" >/dev/null || { echo "ntfs/build.sh: $tool missing (run scripts/deps.sh)" >&2; exit 1; }
done
find "$(dirname "$cache")" -maxdepth 1 -name 'ntfs-*' ! -name "ntfs-$hash" ! -name '*.lock' -mtime +7 -exec rm -rf {} + 2>/dev/null || true
rm -rf "$cache"
mkdir -p "$cache"
cd "$cache"
log() { printf 'ntfs fixture: %s\n' "$*" >&2; }
mnt=$cache/mnt
mkdir -p "$mnt"
cleanup() { mountpoint -q "$mnt" && umount "$mnt" || true; }
trap cleanup EXIT
mountrw() { ntfs-3g -o streams_interface=windows "$1" "$mnt"; }
unmount() { umount "$mnt"; for _ in $(seq 50); do pgrep -f "ntfs-3g.* $mnt" >/dev/null || return 0; sleep 0.1; done; }

log "source tree"
mkdir -p tree/docs/deep/er/still tree/big tree/zip "tree/with space" tree/links tree/sparse
printf 'hello ntfs\n' > tree/hello.txt
printf 'tiny\n' > tree/docs/deep/er/still/leaf.txt
printf 'unicode name\n' > "tree/docs/café-ünï.txt"
printf 'space\n' > "tree/with space/a b.txt"
# Non-resident files of several sizes (deterministic bytes).
for n in 1 2 3; do
  head -c $((n * 70000 + 123)) /dev/zero | tr '\0' "$(printf "\\$(printf '%03o' $((64 + n)))")" > "tree/docs/blob$n.bin"
done
seq 1 200000 > tree/docs/numbers.txt
# A big directory: 3000 entries (index allocation with many INDX blocks).
for i in $(seq -w 1 3000); do printf 'entry %s\n' "$i" > "tree/big/f$i.txt"; done
# Compressible content for the compressed directory.
seq 1 100000 > tree/zip/seq.txt
head -c 300000 /dev/zero > tree/zip/zeros.bin
printf 'short\n' > tree/zip/small.txt
awk 'BEGIN { for (i = 0; i < 7000; i++) print "compressible line of text for LZNT1" }' > tree/zip/text.txt
printf 'linked content\n' > tree/links/orig.txt
printf 'marker VMSCOPE_NTFS_MAIN\n' > tree/links/stomped.txt

log "mkntfs"
truncate -s 96M ntfs.img
mkntfs -F -Q -q -L vmscope-ntfs -c 4096 ntfs.img >/dev/null 2>&1
mountrw ntfs.img
# The compressed directory: files made in it inherit the flag.
mkdir "$mnt/zip"
setfattr -h -v 0x00000800 -n system.ntfs_attrib_be "$mnt/zip"
cp -r --no-preserve=all tree/. "$mnt/"
# Hard links (the tree holds them as separate names of one file).
ln "$mnt/links/orig.txt" "$mnt/links/second.txt"
ln "$mnt/links/orig.txt" "$mnt/docs/third.txt"
ln tree/links/orig.txt tree/links/second.txt
ln tree/links/orig.txt tree/docs/third.txt
# Sparse files: holes around data, and one all hole.
for d in "$mnt/sparse" tree/sparse; do
  printf 'start' | dd of="$d/holes.bin" bs=1 conv=notrunc status=none
  printf 'middle' | dd of="$d/holes.bin" bs=1 seek=$((5 * 1048576)) conv=notrunc status=none
  printf 'end' | dd of="$d/holes.bin" bs=1 seek=$((9 * 1048576)) conv=notrunc status=none
  truncate -s 4M "$d/empty.bin"
done
# Alternate data streams: resident, non-resident, on a directory.
printf 'small stream\n' > "$mnt/hello.txt:small"
seq 1 30000 > "$mnt/hello.txt:big"
printf 'malware VMSCOPE_NTFS_ADS here\n' > "$mnt/docs/numbers.txt:hidden"
printf 'dir stream\n' > "$mnt/docs:dirstream"
printf '[ZoneTransfer]\nZoneId=3\n' > "$mnt/docs/blob1.bin:Zone.Identifier"
# A symlink as ntfs-3g makes them (Interix: a system file "IntxLNK\1" + target).
ln -s hello.txt "$mnt/link-to-hello"
ln -s hello.txt tree/link-to-hello
# A symlink as Windows makes them: a reparse point (IO_REPARSE_TAG_SYMLINK,
# relative), its data written through ntfs-3g's system.ntfs_reparse_data.
u16() { printf '%s' "$1" | iconv -t UTF-16LE | od -An -tx1 | tr -d ' \n'; }
le16() { printf '%02x%02x' $(($1 & 255)) $(($1 >> 8)); }
tgt=$(u16 hello.txt)
n=$((${#tgt} / 2))
body="0000$(le16 "$n")$(le16 "$n")$(le16 "$n")01000000$tgt$tgt"
touch "$mnt/reparse-link"
setfattr -h -v "0x0c0000a0$(le16 $((${#body} / 2)))0000$body" -n system.ntfs_reparse_data "$mnt/reparse-link"
ln -s hello.txt tree/reparse-link
# 150 hard links to one file: its $FILE_NAMEs overflow the record into an
# attribute list and extension records.
mkdir "$mnt/manylinks" tree/manylinks
printf 'one file, many names\n' > "$mnt/manylinks/orig"
printf 'one file, many names\n' > tree/manylinks/orig
for i in $(seq 150); do ln "$mnt/manylinks/orig" "$mnt/manylinks/l$i"; ln tree/manylinks/orig "tree/manylinks/l$i"; done
# Timestomp: utimensat (touch -d) sets the $STANDARD_INFORMATION modification and
# access times to 2001-02-03 04:05:06 UTC; the $FILE_NAME times keep the real ones.
touch -d '2001-02-03 04:05:06Z' "$mnt/links/stomped.txt"
sync
unmount
ntfsls -R -a -i -F ntfs.img > ntfsls.txt 2>/dev/null
fls -r -p ntfs.img > fls.txt
qemu-img convert -f raw -O qcow2 ntfs.img ntfs.qcow2

log "changed copy and overlay"
cp --sparse=always ntfs.img ntfs-changed.img
mountrw ntfs-changed.img
printf 'changed VMSCOPE_NTFS_CHANGED\n' > "$mnt/hello.txt"
printf 'new file\n' > "$mnt/docs/new.txt"
printf 'changed stream\n' > "$mnt/docs/numbers.txt:hidden"
seq 5 200005 > "$mnt/docs/blob2.bin"
printf 'x' | dd of="$mnt/sparse/holes.bin" bs=1 seek=$((7 * 1048576)) conv=notrunc status=none
printf 'entry changed\n' > "$mnt/big/f1500.txt"
sync
unmount
cat > changed.txt <<'LIST'
/hello.txt
/docs/new.txt
/docs/numbers.txt:hidden
/docs/blob2.bin
/sparse/holes.bin
/big/f1500.txt
LIST
(cd "$repo" && go run ./testdata/blkdiff "$cache/ntfs.img" "$cache/ntfs-changed.img" "$cache/chunks") > writes.txt
qemu-img create -q -f qcow2 -b ntfs.qcow2 -F qcow2 ntfs-overlay.qcow2
args=()
while read -r line; do args+=(-c "$line"); done < writes.txt
qemu-io -f qcow2 "${args[@]}" ntfs-overlay.qcow2 >/dev/null
rm -rf chunks

log "dirty volume"
cp --sparse=always ntfs.img ntfs-dirty.img
# ntfsresize marks the volume dirty (Windows is to run chkdsk) after shrinking it.
echo y | ntfsresize -f -s 88M ntfs-dirty.img >/dev/null 2>&1
flags=$(ntfsinfo -f -m ntfs-dirty.img 2>/dev/null | grep 'Volume Flags' || true)
[[ $flags == *0x0001* ]] || { echo "ntfs/build.sh: ntfs-dirty.img is not marked dirty" >&2; exit 1; }

touch .done
ln -sfn "$cache" "$out.tmp" && mv -T "$out.tmp" "$out"
log "done"
