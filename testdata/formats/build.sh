#!/usr/bin/env bash
# Builds the image-format fixtures of disk/vmdk, disk/vhd and disk/vhdx
# with the real tools into testdata/out-formats (git-ignored), a link to a
# cache folder named by the hash of this script (~/.cache/vmscope/formats-HASH).
#
# What it builds, all from ext4.img (mkfs.ext4 -d of a small tree with
# holes and data patterns; the tree is tree/, the reference of ls/cat):
#   ext4.img                         the raw disk (64 MiB)
#   sparse.vmdk flat.vmdk(+-flat)    qemu-img convert -O vmdk -o subformat=monolithicSparse|monolithicFlat
#   stream.vmdk                      subformat=streamOptimized (compressed grains, markers, footer GD)
#   big.img                          ext4.img grown to 2100 MiB (sparse), for the split subformats:
#   split-sparse.vmdk (+-s00N)       subformat=twoGbMaxExtentSparse: two hosted sparse extents
#   split-flat.vmdk (+-f00N)         subformat=twoGbMaxExtentFlat: two flat extents
#   multi.vmdk                       a hand-written descriptor: a SPARSE extent (head.vmdk),
#                                    FLAT extents in p1.raw (at sector 2048) and p2.raw
#   base.vmdk <- delta.vmdk          a VMDK chain: qemu-img create -f vmdk -b base.vmdk -F vmdk
#                                    (zeroed_grain=on), qemu-io writes into two files' first
#                                    blocks (found with debugfs bmap), a write -z in free space;
#                                    delta-touched.txt lists the touched files
#   dynamic.vhd fixed.vhd            qemu-img convert -O vpc -o subformat=dynamic|fixed,force_size=on
#   chs.vhd                          -O vpc without force_size (size from the CHS geometry)
#   dynamic.vhdx fixed.vhdx          qemu-img convert -O vhdx (-o subformat=fixed)
#   delta-writes.txt                 the byte offset and length of each file write of the delta
#   fuzz/seed*.{vmdk,vhd,vhdx}       2 MiB images, the seeds of the fuzz targets
# Differencing VHD/VHDX are built in Go by the tests (qemu-img can't write them).
set -euo pipefail
export LC_ALL=C
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
PATH=$PATH:/usr/sbin:/sbin

hash=$(sha256sum <"$here/build.sh" | cut -c1-16)
cache=${VMSCOPE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vmscope}/formats-$hash
out=$repo/testdata/out-formats
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
for tool in mkfs.ext4 debugfs qemu-img qemu-io; do
  command -v "$tool" >/dev/null || { echo "formats/build.sh: $tool missing (run scripts/deps.sh)" >&2; exit 1; }
done
find "$(dirname "$cache")" -maxdepth 1 -name 'formats-*' ! -name "formats-$hash" ! -name '*.lock' -mtime +7 -exec rm -rf {} + 2>/dev/null || true
rm -rf "$cache"
mkdir -p "$cache"
cd "$cache"
log() { printf 'formats: %s\n' "$*" >&2; }

log "tree"
mkdir -p tree/etc tree/data tree/docs tree/bin
printf 'vmscope-images\n' >tree/etc/hostname
printf 'root:x:0:0:root:/root:/bin/sh\n' >tree/etc/passwd
# 3 MiB of a counting pattern (no two 4 KiB blocks equal).
seq -f 'line %09g of the pattern file' 1 100000 | head -c 3145728 >tree/data/pattern.txt || true
# A file with holes: data at 0, 1 MiB and 6 MiB of an 8 MiB file.
truncate -s 8M tree/data/holes.bin
for at in 0 256 1536; do
  { seq -f "hole-data $at %06g" 1 4000 | head -c 65536 || true; } | dd of=tree/data/holes.bin bs=4096 seek="$at" conv=notrunc status=none
done
for i in $(seq 1 40); do
  seq -f "note $i line %g" 1 $((i * 20)) >"tree/docs/note-$i.txt"
done
printf '#!/bin/sh\necho VMSCOPE_FORMATS_MARKER\n' >tree/bin/run.sh
chmod 755 tree/bin/run.sh
touch -d '2024-01-02 03:04:05' $(find tree)

log "ext4.img"
mkfs.ext4 -q -F -E root_owner=0:0 -U 7c1e2b9a-5d40-4f2e-8a61-0b3c9d8e7f10 -b 4096 -d tree ext4.img 64M
qi() { qemu-img "$@" >/dev/null; }

log "vmdk"
qi convert -O vmdk -o subformat=monolithicSparse ext4.img sparse.vmdk
qi convert -O vmdk -o subformat=monolithicFlat ext4.img flat.vmdk
qi convert -O vmdk -o subformat=streamOptimized ext4.img stream.vmdk
cp --sparse=always ext4.img big.img
truncate -s 2100M big.img
qemu-io -f raw -c 'write -P 0x5a 2090M 64k' -c 'write -P 0xa5 2047M 2M' big.img >/dev/null
qi convert -O vmdk -o subformat=twoGbMaxExtentSparse big.img split-sparse.vmdk
qi convert -O vmdk -o subformat=twoGbMaxExtentFlat big.img split-flat.vmdk

# A descriptor written by hand: a SPARSE extent (ext4.img's first 16 MiB,
# head.vmdk), 16 MiB from p1.raw at sector 2048, then 32 MiB of p2.raw.
head -c 16777216 ext4.img >head.raw
qi convert -O vmdk head.raw head.vmdk
rm head.raw
head -c 33554432 ext4.img | tail -c 16777216 >p1.raw.tmp
{ head -c 1048576 /dev/zero; cat p1.raw.tmp; } >p1.raw
rm p1.raw.tmp
tail -c 33554432 ext4.img >p2.raw
cat >multi.vmdk <<'DESC'
# Disk DescriptorFile
version=1
CID=1a2b3c4d
parentCID=ffffffff
createType="monolithicFlat"

# Extent description
RW 32768 SPARSE "head.vmdk"
RW 32768 FLAT "p1.raw" 2048
RW 65536 FLAT "p2.raw" 0

ddb.adapterType = "ide"
DESC

log "vmdk chain"
qi convert -O vmdk -o zeroed_grain=on ext4.img base.vmdk
qi create -f vmdk -o zeroed_grain=on -b base.vmdk -F vmdk delta.vmdk
# The first block of two files, by debugfs (the reference of which files
# the writes touch).
: >delta-touched.txt
: >delta-writes.txt
args=()
for f in /data/pattern.txt /docs/note-7.txt; do
  blk=$(debugfs -R "bmap $f 0" ext4.img 2>/dev/null)
  args+=(-c "write -P 0x77 $((blk * 4096)) 4096")
  echo "$f" >>delta-touched.txt
  echo "$((blk * 4096)) 4096" >>delta-writes.txt
done
# Zeros over free space at 60 MiB (no file; a zeroed grain in the delta).
args+=(-c "write -z 60M 64k")
qemu-io -f vmdk "${args[@]}" delta.vmdk >/dev/null

log "vhd"
qi convert -O vpc -o subformat=dynamic,force_size=on ext4.img dynamic.vhd
qi convert -O vpc -o subformat=fixed,force_size=on ext4.img fixed.vhd
# Without force_size: the size is the CHS geometry's (creator "qemu").
qi convert -O vpc -o subformat=dynamic ext4.img chs.vhd
log "vhdx"
qi convert -O vhdx ext4.img dynamic.vhdx
qi convert -O vhdx -o subformat=fixed ext4.img fixed.vhdx

log "fuzz seeds"
mkdir -p fuzz
qi create -f raw fuzz/seed.raw 2M
qemu-io -f raw -c 'write -P 0x11 0 64k' -c 'write -P 0x22 1M 4k' fuzz/seed.raw >/dev/null
qi convert -O vmdk fuzz/seed.raw fuzz/seed.vmdk
qi convert -O vmdk -o subformat=streamOptimized fuzz/seed.raw fuzz/seed-stream.vmdk
qi convert -O vmdk -o subformat=monolithicFlat fuzz/seed.raw fuzz/seed-flat.vmdk
qi convert -O vpc -o subformat=dynamic,force_size=on fuzz/seed.raw fuzz/seed.vhd
qi convert -O vhdx -o block_size=1M fuzz/seed.raw fuzz/seed.vhdx

chmod a-w ./*.vmdk ./*.vhd ./*.vhdx ./*.img ./*.raw
touch .done
ln -sfn "$cache" "$out.tmp" && mv -T "$out.tmp" "$out"
log "done: $out"
