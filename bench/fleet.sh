#!/usr/bin/env bash
# vmscope fleet against one `vmscope scan` per image under GNU parallel, on
# OVERLAYS qcow2 overlays (default 40) on 2 raw ext4 bases of FILES real
# files each (default 20,000, copied from /usr/share and /usr/lib), each
# overlay changing 1% of its base's files (bench/fleetgen.sh, cached in
# ~/.cache/vmscope/fleetbench-*):
#   (b) GNU parallel -j 2 running vmscope scan IMAGE per image
#   (c) (a)'s first poll with --no-state (no poll state, no base sharing)
#   (a) vmscope fleet scan, 2 shards at once: a first poll, then a second one
#       after 1% more churn in every overlay
# RUNS times (default 1) in that order, each run on fresh copies of the
# overlays and an empty state. Prints, per run, the wall time of each, the
# ratios c/b, a1/b, a2/b (goals: c within 1.05, a1 <= 0.25, a2 <= 0.05),
# the bytes read per image (rchar of the process tree: every read(2) and
# pread(2), image and rules alike; the state is mmap'ed and not counted),
# the CPU time (user + system) of each, the peak memory per shard and the
# load average; then the medians. On a loaded machine the CPU times are the
# steadier measure.
# Same rules for all (the embedded default rules; (b) compiles them in
# each process, as a one-image scan does without a rules cache).
#   FILES=N OVERLAYS=N JOBS=N (files scanned in parallel per process, 1) RUNS=N
#   BALANCE=hash|size (the shards' --balance, default hash: rendezvous
#   hashing may give the two shards unequal counts, e.g. 18 and 22 of 40,
#   which (b)'s dynamic GNU parallel never has; size spreads them evenly)
set -euo pipefail
cd "$(dirname "$0")/.."
PATH=$PATH:/usr/local/go/bin:/usr/sbin:/sbin
FILES=${FILES:-20000}
OVERLAYS=${OVERLAYS:-40}
JOBS=${JOBS:-1}
RUNS=${RUNS:-1}
BALANCE=${BALANCE:-hash}
for t in parallel /usr/bin/time; do
  command -v "$t" >/dev/null || { echo "fleet.sh: $t missing (scripts/deps.sh)"; exit 1; }
done
V=$PWD/bin/vmscope
mkdir -p bin
go build -o "$V" ./cmd/vmscope
G=$(FILES=$FILES OVERLAYS=$OVERLAYS bash bench/fleetgen.sh | tail -n 1)
W=$(mktemp -d "${TMPDIR:-/tmp}/vmscope-bench-fleet.XXXXXX")
trap 'rm -rf "$W"' EXIT
for n in $(seq 1 "$OVERLAYS"); do printf '{"id":"ov-%s","path":"%s"}\n' "$n" "$W/ov-$n.qcow2"; done > "$W/inventory.ndjson"

now() { date +%s%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", (b - a) / 1e9}'; }
# counted FILE CMD...: runs CMD in a shell that, once CMD is reaped, adds
# a line to FILE: the rchar of the whole tree (Linux sums a reaped child's
# I/O into its parent) and its CPU seconds (the shell's cutime + cstime).
counted() {
  local f=$1
  shift
  bash -c '"$@" > /dev/null || true; r=$(awk "/^rchar/ {print \$2}" /proc/$$/io); awk -v r="$r" -v hz="$(getconf CLK_TCK)" "{print r, (\$16 + \$17) / hz}" /proc/$$/stat' _ "$@" >> "$f"
}
# shards RUN FLAGS: 2 shard processes at once; peak KiB of each in
# $W/peak-RUN-i, rchar in $W/io-RUN.
shards() {
  local run=$1 pids=()
  shift
  for i in 0 1; do
    counted "$W/io-$run" /usr/bin/time -f '%M' -o "$W/peak-$run-$i" "$V" fleet scan "$W/inventory.ndjson" --shard "$i/2" \
      --state-dir "$W/state-$run" --out "$W/out" --run-id "$run" --jobs "$JOBS" --balance "$BALANCE" --findings-exit-code 0 "$@" 2>"$W/err-$run-$i" &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p" || true; done
}
peak() { echo "$(($(cat "$W/peak-$1-0") / 1024)) MiB, $(($(cat "$W/peak-$1-1") / 1024)) MiB"; }
perimage() { awk -v n="$OVERLAYS" '{s += $1} END {printf "%d", s / n}' "$W/io-$1"; }
cpu() { awk '{s += $2} END {printf "%.2f", s}' "$W/io-$1"; }
overlays() { for n in $(seq 1 "$OVERLAYS"); do cp "$G/$1/ov-$n.qcow2" "$W/ov-$n.qcow2"; done; }

nfiles=$(wc -l < "$G/files1")
echo "fleet bench: $OVERLAYS overlays on 2 bases of $nfiles files, $((nfiles / 100)) files changed per overlay per poll, 2 processes, --balance $BALANCE, $(nproc) cores"
for r in $(seq 1 "$RUNS"); do
  rm -rf "$W/state-"* "$W/out" "$W/io-"* "$W/peak-"*
  overlays p1
  sync
  l0=$(cut -d' ' -f1 /proc/loadavg)
  t0=$(now); counted "$W/io-b" parallel -j 2 "$V" scan --jobs "$JOBS" --format ndjson --rules-cache off {} ::: "$W"/ov-*.qcow2 > /dev/null 2>&1; t1=$(now)
  b=$(secs "$t0" "$t1")
  t0=$(now); shards nostate --no-state; t1=$(now)
  c=$(secs "$t0" "$t1")
  t0=$(now); shards poll1; t1=$(now)
  a1=$(secs "$t0" "$t1")
  overlays p2
  # The second poll is a new run on the same state.
  cp -a "$W/state-poll1" "$W/state-poll2"
  t0=$(now); shards poll2; t1=$(now)
  a2=$(secs "$t0" "$t1")
  l1=$(cut -d' ' -f1 /proc/loadavg)
  for run in poll1 poll2; do
    grep -h 'images:' "$W/err-$run-"* | sed "s/^/  $run: /"
  done
  echo "run $r: b $b s, c $c s, a1 $a1 s, a2 $a2 s" | tee -a "$W/runs"
  echo "cpu $r: b $(cpu b) s, c $(cpu nostate) s, a1 $(cpu poll1) s, a2 $(cpu poll2) s" | tee -a "$W/cpus"
  awk -v b="$b" -v c="$c" -v a1="$a1" -v a2="$a2" 'BEGIN {
    printf "  wall ratio c/b %.3f (goal <= 1.05), a1/b %.3f (goal <= 0.25), a2/b %.3f (goal <= 0.05)\n", c / b, a1 / b, a2 / b }'
  awk -v b="$(cpu b)" -v c="$(cpu nostate)" -v a1="$(cpu poll1)" -v a2="$(cpu poll2)" 'BEGIN {
    printf "  CPU ratio  c/b %.3f, a1/b %.3f, a2/b %.3f\n", c / b, a1 / b, a2 / b }'
  echo "  bytes read per image: b $(perimage b), c $(perimage nostate), a1 $(perimage poll1), a2 $(perimage poll2)"
  echo "  peak memory per shard: c $(peak nostate); a1 $(peak poll1); a2 $(peak poll2)"
  echo "  load average (1 min) $l0 at start, $l1 at end"
done
# medians WHAT FILE: the median of each measure over the runs, and the ratios.
medians() {
  awk -v what="$1" '{b[NR] = $4; c[NR] = $7; a1[NR] = $10; a2[NR] = $13}
    function med(x, n,   i, j, t) { for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (x[j] < x[i]) { t = x[i]; x[i] = x[j]; x[j] = t }
      return n % 2 ? x[(n + 1) / 2] : (x[n / 2] + x[n / 2 + 1]) / 2 }
    END { n = NR; mb = med(b, n); mc = med(c, n); m1 = med(a1, n); m2 = med(a2, n)
      printf "median %s of %d runs: b %.2f s, c %.2f s, a1 %.2f s, a2 %.2f s; c/b %.3f (goal <= 1.05), a1/b %.3f (goal <= 0.25), a2/b %.3f (goal <= 0.05)\n", what, n, mb, mc, m1, m2, mc / mb, m1 / mb, m2 / mb }' "$2"
}
medians wall "$W/runs"
medians CPU "$W/cpus"
