#!/usr/bin/env bash
# vmscope on XFS: ls -r against find over a read-only loop mount of the same
# image, and scan against yara -r -p N over that mount (same rules: vmscope's
# embedded set), in the same run, ratios A/B (bench/timing.sh). The image is
# an XFS filesystem holding a copy of this machine's /usr/share, /usr/bin and
# /usr/include (the tree of bench/common.sh), written through a loop mount.
# Needs root, loop devices and the xfs module; says so and stops otherwise.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH=$PATH:/usr/sbin:/sbin
OUT=bench/.out
XIMG=$OUT/usr-xfs.img
MNT=$PWD/$OUT/xfsmnt
V=$PWD/bin/vmscope
source bench/timing.sh
mkdir -p "$OUT" "$MNT"
cleanup() { umount "$MNT" 2>/dev/null || true; }
trap cleanup EXIT
if [ ! -f "$XIMG" ]; then
  truncate -s 3G "$XIMG.tmp"
  mkfs.xfs -q -f -m reflink=1,bigtime=1 "$XIMG.tmp"
  if ! mount -o loop "$XIMG.tmp" "$MNT"; then
    echo "bench/xfs.sh: a loop mount of XFS is not possible here (needs root, loop devices, the xfs module)" >&2
    rm -f "$XIMG.tmp"
    exit 1
  fi
  mkdir -p "$MNT/usr"
  cp -a /usr/share /usr/bin /usr/include "$MNT/usr/"
  umount "$MNT"
  mv "$XIMG.tmp" "$XIMG"
fi
mount -o ro,loop,norecovery "$XIMG" "$MNT"
FILES=$(find "$MNT" -type f | wc -l)
echo "bench image: $XIMG (XFS, $(du -sh "$MNT" | cut -f1) in $FILES regular files, $(find "$MNT" | wc -l) entries)"
N=${JOBS:-$(nproc)}
RULES=$OUT/rules.yar
cat scan/rules/*.yar > "$RULES"
D="-d filename= -d filepath= -d extension= -d filetype= -d owner= -d md5="
RUNS=${RUNS:-3}
echo "== listing: vmscope ls -r (A) vs find over a read-only loop mount (B)"
bench_vs "$RUNS" "$V ls -r $XIMG" "find $MNT -printf '%i %M %n %u %g %s %T@ %p\n'"
echo "== scan: vmscope scan (A) vs yara -r -p $N over a read-only loop mount (B)"
bench_vs "$RUNS" "$V scan --jobs $N --format ndjson $XIMG >/dev/null; test \$? -le 1" \
  "yara $D -r -p $N $RULES $MNT >/dev/null"
