#!/usr/bin/env bash
# Dirty-file scanning at 1% churn: on the bench image (common.sh: ~60,000
# files, 1 GiB of content), change 1% of the regular files with debugfs on a
# copy (two thirds rewritten with new content, one third chmod'ed), carry the
# changed blocks into an overlay and into a qcow2 with an enabled persistent
# bitmap (blkdiff + qemu-io, as testdata/fixtures.sh does), then time in one
# run, pair by pair: a full `vmscope scan` (B) against
# `vmscope scan --dirty SOURCE --state S` with a warm state (A), for the cow,
# bitmap and hash sources. The warm state is made by one first poll (a full
# scan, timed once) before the changes; every timed dirty run starts from a
# copy of it, made untimed before the run (PREP_A; the copy alone is timed
# too). Prints the ratios, the state's size
# per file and what each poll found; then (SCALE=1, the default) the same
# churn on an image of four copies of the tree: poll(4x) / poll(1x), goal 1.5.
#   N=3 bash bench/dirty.sh
source "$(dirname "$0")/common.sh"
N=${N:-3}
J=${JOBS:-$(nproc)}
W=$OUT/dirty
rm -rf "$W"
mkdir -p "$W/new"
VD=$W/vmscope
go build -o "$VD" ./cmd/vmscope
SCAN="$VD scan --jobs $J --format ndjson"

# 1. The change: every 100th regular file with a plain name.
find "$STAGE" -type f -printf '%P\n' | LC_ALL=C sort | grep -E '^[A-Za-z0-9._/+-]+$' |
  awk 'NR % 100 == 0' > "$W/changed.list"
CHANGED=$(wc -l < "$W/changed.list")
i=0
while read -r p; do
  if [ $((i % 3)) -eq 0 ]; then
    echo "sif /$p mode 0100600"
  else
    head -c $((4096 + (i * 997) % 60000)) /dev/urandom > "$W/new/$i"
    echo "rm /$p"
    echo "write $W/new/$i /$p"
  fi
  i=$((i + 1))
done < "$W/changed.list" > "$W/debugfs.cmds"
cp --sparse=always "$IMG" "$W/changed.img"
debugfs -w -f "$W/debugfs.cmds" "$W/changed.img" >/dev/null 2>"$W/debugfs.err"
go run ./testdata/blkdiff "$IMG" "$W/changed.img" "$W/chunks" > "$W/writes.txt"
echo "churn: $CHANGED of $FILES files ($(wc -l < "$W/writes.txt") block runs written)"
qio() { # qio IMG: the writes of writes.txt in one qemu-io call
  local args=()
  while read -r line; do args+=(-c "$line"); done < "$W/writes.txt"
  qemu-io -f qcow2 "${args[@]}" "$1" >/dev/null
}

# 2. The images, each polled once before the change (the warm state).
IMGABS=$(readlink -f "$IMG")
qemu-img create -q -f qcow2 -b "$IMGABS" -F raw "$W/ov.qcow2"
qemu-img convert -f raw -O qcow2 "$IMG" "$W/bm.qcow2"
qemu-img bitmap --add --enable "$W/bm.qcow2" poll
cp --sparse=always "$IMG" "$W/hash.img"
first_poll() { # first_poll NAME IMAGE SOURCE
  local TIMEFORMAT="first poll ($1, a full scan that fills the state): %R s"
  time { $SCAN --dirty "$3" --state "$W/$1.state" "$2" >/dev/null 2>"$W/$1.first.err" || [ $? -le 1 ]; }
  cp "$W/$1.state" "$W/$1.warm"
}
first_poll cow "$W/ov.qcow2" cow
first_poll bitmap "$W/bm.qcow2" bitmap:poll
first_poll hash "$W/hash.img" hash
qio "$W/ov.qcow2"
qio "$W/bm.qcow2"
cp --sparse=always "$W/changed.img" "$W/hash.img"
qemu-img info --output=json "$W/bm.qcow2" | grep -A3 '"bitmaps"' | tr -d ' \n'; echo

ENTRIES=$(find "$STAGE" | wc -l)
echo "state: $(stat -c %s "$W/cow.warm") bytes for $ENTRIES files and directories: $(( $(stat -c %s "$W/cow.warm") / ENTRIES )) bytes per file"

# 3. What each poll finds (not timed).
for s in cow:ov.qcow2:cow bitmap:bm.qcow2:bitmap:poll hash:hash.img:hash; do
  name=${s%%:*}; rest=${s#*:}; img=${rest%%:*}; src=${rest#*:}
  cp "$W/$name.warm" "$W/$name.state"
  $SCAN --dirty "$src" --state "$W/$name.state" "$W/$img" 2>&1 >/dev/null | grep 'dirty source' || true
done

# 4. The timings: A dirty poll from the warm state, B full scan of the same image.
for s in cow:ov.qcow2:cow bitmap:bm.qcow2:bitmap:poll hash:hash.img:hash; do
  name=${s%%:*}; rest=${s#*:}; img=${rest%%:*}; src=${rest#*:}
  echo "== $name: vmscope scan --dirty $src --state (A, warm state) vs full vmscope scan (B)"
  PREP_A="cp $W/$name.warm $W/$name.state" bench_vs "$N" "$SCAN --dirty $src --state $W/$name.state $W/$img >/dev/null 2>&1; test \$? -le 1" \
    "$SCAN $W/$img >/dev/null 2>&1; test \$? -le 1"
done
echo "== the state copy alone (made before every A above, untimed)"
bench_one "$N" cp "$W/cow.warm" "$W/cow.state"

# 5. vmscope diff of the overlay against its base (only the ranges the
# overlay holds) against diff --full (a full walk of both images with a
# sha256 of every file), and whether they report the same paths.
# virt-diff --checksum is compared in bench/diff.sh, on fewer files: under
# TCG it takes about 80 ms a file, two hours for this image.
echo "== vmscope diff BASE OVERLAY (A) vs vmscope diff --full BASE OVERLAY (B)"
bench_vs "$N" "$VD diff --format ndjson $IMG $W/ov.qcow2 >/dev/null" "$VD diff --full --format ndjson $IMG $W/ov.qcow2 >/dev/null"
paths() { grep -v '"type":"dir"' "$1" | grep -oE '"(path|old_paths)":(\[[^]]*\]|"[^"]*")' | grep -oE '"/[^"]*"' | tr -d '"' | LC_ALL=C sort -u; }
"$VD" diff --format ndjson "$IMG" "$W/ov.qcow2" > "$W/diff.out"
"$VD" diff --full --format ndjson "$IMG" "$W/ov.qcow2" > "$W/diff-full.out"
paths "$W/diff.out" > "$W/diff.paths"
paths "$W/diff-full.out" > "$W/diff-full.paths"
echo "paths: diff $(wc -l < "$W/diff.paths"), diff --full $(wc -l < "$W/diff-full.paths"), in one only: $(LC_ALL=C comm -3 "$W/diff.paths" "$W/diff-full.paths" | wc -l)"

# 6. Scaling: the same absolute churn (the same files, in the first of four
# copies of the tree) on an image four times larger, cow source. A poll
# must cost what changed, not what exists: A (4x image) / B (1x image)
# should stay within 1.5. SCALE=0 skips it (it builds a ~4 GiB image once).
if [ "${SCALE:-1}" = 1 ]; then
  IMG4=$OUT/usr4.img
  if [ ! -f "$IMG4" ]; then
    rm -rf "$OUT/stage4"
    mkdir -p "$OUT/stage4"
    for k in 1 2 3 4; do cp -a "$STAGE" "$OUT/stage4/c$k"; done
    mkfs.ext4 -q -F -b 4096 -d "$OUT/stage4" "$IMG4.tmp" 8G
    rm -rf "$OUT/stage4"
    mv "$IMG4.tmp" "$IMG4"
  fi
  sed -E 's# /([^ ]*)( mode 0100600)?$# /c1/\1\2#' "$W/debugfs.cmds" > "$W/debugfs4.cmds"
  cp --sparse=always "$IMG4" "$W/changed4.img"
  debugfs -w -f "$W/debugfs4.cmds" "$W/changed4.img" >/dev/null 2>"$W/debugfs4.err"
  go run ./testdata/blkdiff "$IMG4" "$W/changed4.img" "$W/chunks4" > "$W/writes4.txt"
  rm -f "$W/changed4.img"
  qemu-img create -q -f qcow2 -b "$(readlink -f "$IMG4")" -F raw "$W/ov4.qcow2"
  first_poll cow4 "$W/ov4.qcow2" cow
  args=()
  while read -r line; do args+=(-c "$line"); done < "$W/writes4.txt"
  qemu-io -f qcow2 "${args[@]}" "$W/ov4.qcow2" >/dev/null
  echo "4x image: $(stat -c %s "$IMG4") bytes, $(wc -l < "$W/writes4.txt") block runs written; state $(stat -c %s "$W/cow4.warm") bytes"
  cp "$W/cow4.warm" "$W/cow4.state"
  $SCAN --dirty cow --state "$W/cow4.state" "$W/ov4.qcow2" 2>&1 >/dev/null | grep 'dirty source' || true
  echo "== scaling: vmscope scan --dirty cow, same churn, 4x image (A) vs 1x image (B)"
  PREP_A="cp $W/cow4.warm $W/cow4.state" PREP_B="cp $W/cow.warm $W/cow.state" bench_vs "$N" \
    "$SCAN --dirty cow --state $W/cow4.state $W/ov4.qcow2 >/dev/null 2>&1; test \$? -le 1" \
    "$SCAN --dirty cow --state $W/cow.state $W/ov.qcow2 >/dev/null 2>&1; test \$? -le 1"
fi
