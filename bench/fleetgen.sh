#!/usr/bin/env bash
# Builds the fleet of bench/fleet.sh with the real tools and prints the
# folder that holds it: ~/.cache/vmscope/fleetbench-FILES-OVERLAYS-HASH
# (HASH: of this script), built once under flock.
#
#   base1.img, base2.img  raw ext4 (mkfs.ext4 -d) of FILES real files each
#                         (from /usr/share and /usr/lib, < 256 KiB)
#   files1, files2        their paths
#   p1/ov-N.qcow2         OVERLAYS qcow2 overlays, N odd on base2, even on
#                         base1: the base with 1% of its files rewritten
#                         (debugfs, seeded), holding only the clusters that
#                         differ from the base, as the overlay of a VM that
#                         wrote them would (qemu-img rebase of an empty
#                         overlay of the changed raw disk onto the base;
#                         qemu-img convert -B writes every cluster of a raw
#                         source, some 40% of the disk here)
#   p2/ov-N.qcow2         the same overlay after 1% more churn (the changes
#                         of p1, then another seeded 1%)
#   FILES=N OVERLAYS=N
set -euo pipefail
export LC_ALL=C
PATH=$PATH:/usr/sbin:/sbin
FILES=${FILES:-20000}
OVERLAYS=${OVERLAYS:-40}
for t in mkfs.ext4 debugfs qemu-img shuf; do
  command -v "$t" >/dev/null || { echo "fleetgen.sh: $t missing (scripts/deps.sh)" >&2; exit 1; }
done
hash=$(sha256sum < "$0" | cut -c1-12)
cache=${VMSCOPE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vmscope}/fleetbench-$FILES-$OVERLAYS-$hash
mkdir -p "$(dirname "$cache")"
exec 9>"$cache.lock"
flock 9
if [ -f "$cache/.done" ]; then echo "$cache"; exit 0; fi
rm -rf "$cache"
mkdir -p "$cache/p1" "$cache/p2"
W=$(mktemp -d "${TMPDIR:-/tmp}/vmscope-fleetgen.XXXXXX")
trap 'rm -rf "$W"' EXIT
export E2FSPROGS_FAKE_TIME=1700000000

i=0
for src in /usr/share /usr/lib; do
  i=$((i + 1))
  mkdir -p "$W/tree$i"
  (cd "$src" && find . -type f -size -256k -readable 2>/dev/null | sort > "$W/list$i") || true
  head -n "$FILES" "$W/list$i" > "$W/pick$i"
  (cd "$src" && tar -cf - -T "$W/pick$i" 2>/dev/null || true) | tar -xf - -C "$W/tree$i"
  kib=$(du -sk "$W/tree$i" | cut -f1)
  mkfs.ext4 -q -F -b 4096 -N $((FILES * 2 + 1024)) -d "$W/tree$i" "$cache/base$i.img" $((kib * 3 / 2 / 1024 + 64))M
  find "$W/tree$i" -type f | sed "s|^$W/tree$i||" | sort > "$cache/files$i"
  rm -rf "$W/tree$i"
done
churn=$(($(wc -l < "$cache/files1") / 100))

# cmds N B SEED: debugfs commands rewriting 1% of base B's files (seeded).
cmds() {
  printf 'changed by overlay %s seed %s\n' "$1" "$3" > "$W/data-$1-$3"
  shuf -n "$churn" --random-source=<(yes "$1$3") "$cache/files$2" | sed "s|.*|rm &\nwrite $W/data-$1-$3 &|"
}
for n in $(seq 1 "$OVERLAYS"); do
  b=$(((n % 2) + 1)) raw=$W/ov.raw
  cp --sparse=always "$cache/base$b.img" "$raw"
  for p in 1 2; do
    cmds "$n" "$b" "$p" > "$W/cmd"
    debugfs -w -f "$W/cmd" "$raw" >/dev/null 2>&1
    rm -f "$W/ov.qcow2"
    qemu-img create -q -f qcow2 -b "$raw" -F raw "$W/ov.qcow2"
    qemu-img rebase -f qcow2 -b "$cache/base$b.img" -F raw "$W/ov.qcow2"
    mv "$W/ov.qcow2" "$cache/p$p/ov-$n.qcow2"
  done
  rm -f "$raw"
done
echo "$FILES files, $OVERLAYS overlays, $churn files changed per overlay per poll" > "$cache/.done"
echo "$cache"
