# Shared by the bench scripts: builds (once) the benchmark image, an ext4
# filesystem of this machine's /usr/share, /usr/bin and /usr/include (about
# 60,000 files, 1 GiB), and keeps the staged tree as the "already extracted"
# input of the peer tools.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH=$PATH:/usr/sbin:/sbin
OUT=bench/.out  # a dot folder: the go tool ignores the Go sources of the staged tree
IMG=$OUT/usr.img
STAGE=$OUT/stage
V=$PWD/bin/vmscope
source bench/timing.sh
if [ ! -f "$IMG" ]; then
  rm -rf "$STAGE"
  mkdir -p "$STAGE/usr"
  cp -a /usr/share /usr/bin /usr/include "$STAGE/usr/"
  mkfs.ext4 -q -F -b 4096 -d "$STAGE" "$IMG" 2G
fi
FILES=$(find "$STAGE" -type f | wc -l)
echo "bench image: $IMG ($(du -sh --apparent-size "$STAGE" | cut -f1) in $FILES regular files, $(find "$STAGE" | wc -l) entries)"
