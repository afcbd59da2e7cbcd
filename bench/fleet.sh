#!/usr/bin/env bash
# vmscope fleet against one `vmscope scan` per image under GNU parallel, on
# OVERLAYS qcow2 overlays (default 40) on 2 raw ext4 bases of FILES real
# files each (default 20,000, copied from /usr/share and /usr/lib), each
# overlay changing 1% of its base's files (debugfs, then qemu-img convert -B):
#   (a) vmscope fleet scan, 2 shards at once: a first poll, then a second one
#       after 1% more churn in every overlay
#   (b) GNU parallel -j 2 running vmscope scan IMAGE per image
#   (c) (a)'s first poll with --no-state (no poll state, no base sharing)
# Prints the wall time of each, the ratios c/b, a1/b, a2/b (goals: c within
# 1.05, a1 <= 0.25, a2 <= 0.05), bytes read per image and peak memory per
# shard. Same rules for all (the embedded default rules).
#   FILES=N OVERLAYS=N JOBS=N (files scanned in parallel per process, 1)
set -euo pipefail
cd "$(dirname "$0")/.."
PATH=$PATH:/usr/local/go/bin:/usr/sbin:/sbin
FILES=${FILES:-20000}
OVERLAYS=${OVERLAYS:-40}
JOBS=${JOBS:-1}
for t in mkfs.ext4 debugfs qemu-img parallel /usr/bin/time; do
  command -v "$t" >/dev/null || { echo "fleet.sh: $t missing (scripts/deps.sh)"; exit 1; }
done
V=$PWD/bin/vmscope
mkdir -p bin
go build -o "$V" ./cmd/vmscope
W=$(mktemp -d "${TMPDIR:-/tmp}/vmscope-bench-fleet.XXXXXX")
trap 'rm -rf "$W"' EXIT
export E2FSPROGS_FAKE_TIME=1700000000

# Two bases of real files.
i=0
for src in /usr/share /usr/lib; do
  i=$((i + 1))
  mkdir -p "$W/tree$i"
  (cd "$src" && find . -type f -size -256k -readable 2>/dev/null | sort > "$W/list$i") || true
  head -n "$FILES" "$W/list$i" > "$W/pick$i"
  (cd "$src" && tar -cf - -T "$W/pick$i" 2>/dev/null || true) | tar -xf - -C "$W/tree$i"
  kib=$(du -sk "$W/tree$i" | cut -f1)
  mkfs.ext4 -q -F -b 4096 -N $((FILES * 2 + 1024)) -d "$W/tree$i" "$W/base$i.img" $((kib * 3 / 2 / 1024 + 64))M
  find "$W/tree$i" -type f | sed "s|^$W/tree$i||" | sort > "$W/files$i"
done
nfiles=$(wc -l < "$W/files1")
churn=$((nfiles / 100))

# mkoverlay N BASE SEED: overlay N = its base with 1% of the files
# rewritten (seeded), as a qcow2 overlay holding only the changes.
mkoverlay() {
  local n=$1 b=$2 seed=$3 raw=$W/work-$1.raw
  if [ -f "$W/ov-$n.raw" ]; then cp "$W/ov-$n.raw" "$raw"; else cp "$W/base$b.img" "$raw"; fi
  printf 'changed by overlay %s seed %s\n' "$n" "$seed" > "$W/data-$n"
  shuf -n "$churn" --random-source=<(yes "$n$seed") "$W/files$b" | sed "s|.*|rm &\nwrite $W/data-$n &|" > "$W/cmd-$n"
  debugfs -w -f "$W/cmd-$n" "$raw" >/dev/null 2>&1
  qemu-img convert -q -f raw -O qcow2 -B "$W/base$b.img" -F raw "$raw" "$W/ov-$n.qcow2.new"
  mv "$W/ov-$n.qcow2.new" "$W/ov-$n.qcow2"
  mv "$raw" "$W/ov-$n.raw"
}
for n in $(seq 1 "$OVERLAYS"); do
  mkoverlay "$n" $(((n % 2) + 1)) 1
done
for n in $(seq 1 "$OVERLAYS"); do printf '{"id":"ov-%s","path":"%s"}\n' "$n" "$W/ov-$n.qcow2"; done > "$W/inventory.ndjson"

now() { date +%s%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", (b - a) / 1e9}'; }
# shards RUN FLAGS: 2 shard processes at once; peak MiB of each in $W/peak-RUN-i.
shards() {
  local run=$1 pids=()
  shift
  for i in 0 1; do
    /usr/bin/time -f '%M' -o "$W/peak-$run-$i" "$V" fleet scan "$W/inventory.ndjson" --shard "$i/2" \
      --state-dir "$W/state-$run" --out "$W/out" --run-id "$run" --jobs "$JOBS" --findings-exit-code 0 "$@" 2>/dev/null &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p" || true; done
}
peak() { echo "$(( $(cat "$W/peak-$1-0") / 1024 )) MiB, $(( $(cat "$W/peak-$1-1") / 1024 )) MiB"; }
bytes() { "$V" fleet report --out "$W/out/$1" --format json 2>/dev/null | awk '/"bytes_read"/ {gsub(/[^0-9]/, ""); print; exit}'; }

sync
t0=$(now); parallel -j 2 "$V" scan --jobs "$JOBS" --format ndjson --rules-cache off {} ::: "$W"/ov-*.qcow2 > /dev/null 2>&1 || true; t1=$(now)
b=$(secs "$t0" "$t1")
t0=$(now); shards nostate --no-state; t1=$(now)
c=$(secs "$t0" "$t1")
t0=$(now); shards poll1; t1=$(now)
a1=$(secs "$t0" "$t1")
for n in $(seq 1 "$OVERLAYS"); do mkoverlay "$n" $(((n % 2) + 1)) 2; done
# The second poll is a new run on the same state.
cp -a "$W/state-poll1" "$W/state-poll2"
t0=$(now); shards poll2; t1=$(now)
a2=$(secs "$t0" "$t1")

echo "fleet bench: $OVERLAYS overlays on 2 bases of $nfiles files, $churn files changed per overlay per poll, 2 processes"
printf '%-44s %8s s\n' "(b) parallel -j 2 vmscope scan IMAGE" "$b" "(c) fleet scan, 2 shards, --no-state" "$c" "(a) fleet scan, 2 shards, first poll" "$a1" "(a) fleet scan, 2 shards, second poll" "$a2"
awk -v b="$b" -v c="$c" -v a1="$a1" -v a2="$a2" 'BEGIN {
  printf "ratio c/b  %.3f (goal <= 1.05)\nratio a1/b %.3f (goal <= 0.25)\nratio a2/b %.3f (goal <= 0.05)\n", c / b, a1 / b, a2 / b }'
for r in nostate poll1 poll2; do
  echo "$r: bytes read per image $(( $(bytes "$r") / OVERLAYS )), peak memory per shard $(peak "$r")"
done
