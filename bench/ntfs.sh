#!/usr/bin/env bash
# NTFS: vmscope ls -r against Sleuth Kit's fls -r, and vmscope scan against
# the pipeline without vmscope (an ntfs-3g read-only FUSE mount, then
# yara -r -p N over it, then unmount), same rules (vmscope's embedded set),
# same run, on an NTFS image of this machine's /usr/share (about 47,000
# files) written through ntfs-3g. Prints the figures with the ratios A/B
# (bench/timing.sh). The ntfs-3g daemon leaves the shell, so B's cpu figure
# misses its share: compare wall times.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=$PATH:/usr/sbin:/sbin
OUT=bench/.out
IMG=$OUT/ntfs-usr.img
MNT=$OUT/ntfs-mnt
V=$PWD/bin/vmscope
source bench/timing.sh
[ -x "$V" ] || go build -o "$V" ./cmd/vmscope
mkdir -p "$OUT" "$MNT"
if [ ! -f "$IMG" ]; then
  rm -f "$IMG.tmp"
  truncate -s 2G "$IMG.tmp"
  mkntfs -F -Q -q -L usr "$IMG.tmp" >/dev/null 2>&1
  ntfs-3g "$IMG.tmp" "$MNT"
  mkdir -p "$MNT/usr"
  cp -rP --no-preserve=all /usr/share "$MNT/usr/" 2>/dev/null || true
  umount "$MNT"
  mv "$IMG.tmp" "$IMG"
fi
echo "bench image: $IMG ($(fls -r "$IMG" | grep -c '^[+ ]*r/r') fls regular entries)"
N=${JOBS:-$(nproc)}
RUNS=${RUNS:-3} # timed runs of each command (after one untimed warm-up)
RULES=$OUT/rules.yar
cat scan/rules/*.yar > "$RULES"
D="-d filename= -d filepath= -d extension= -d filetype= -d owner= -d md5="
echo "== listing: vmscope ls -r (A) vs fls -r (B)"
bench_vs "$RUNS" "$V ls -r $IMG" "fls -r $IMG"
echo "== vmscope scan (A) vs ntfs-3g -o ro mount + yara -r -p $N + umount (B)"
bench_vs "$RUNS" "$V scan --jobs $N --format ndjson $IMG >/dev/null; test \$? -le 1" \
  "ntfs-3g -o ro $IMG $MNT && yara $D -r -p $N $RULES $MNT >/dev/null; umount $MNT"
