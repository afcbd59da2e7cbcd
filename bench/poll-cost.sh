#!/usr/bin/env bash
# The fixed cost of a poll: `vmscope scan --dirty cow --state S` on an image
# whose overlay holds nothing (an empty change set), with a large public
# rule set, with the compiled-rules cache (A) and without it (B, what every
# poll paid before the cache: compiling the rules), in the same run, and the
# process start (`vmscope help`) to subtract. Goal: A <= 50 ms + process start.
#
# RULES is a directory of a large public rule set (thousands of rules, e.g.
# a checkout of signature-base or Yara-Rules), fetched by whoever runs the
# bench; it is never committed. Default: bench/.out/rules.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=$PATH:/usr/sbin:/sbin
source bench/timing.sh
RULES=${RULES:-bench/.out/rules}
N=${RUNS:-10}
if [ ! -d "$RULES" ] || [ -z "$(find -L "$RULES" \( -name '*.yar' -o -name '*.yara' \) -print -quit)" ]; then
  echo "poll-cost.sh: RULES=$RULES holds no .yar/.yara files; point RULES at a large public rule set (e.g. a signature-base checkout's yara/ folder)" >&2
  exit 1
fi
go build -o bin/vmscope ./cmd/vmscope
V=$PWD/bin/vmscope
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
mkdir "$W/tree"
echo hello > "$W/tree/file"
mkfs.ext4 -q -F -d "$W/tree" "$W/base.img" 16M
qemu-img create -q -f qcow2 -b "$W/base.img" -F raw "$W/top.qcow2"
# First poll: creates the state, scans the image, fills the cache.
"$V" scan --dirty cow --state "$W/s.db" --rules "$RULES" --format ndjson "$W/top.qcow2" > "$W/first.ndjson" 2> "$W/first.err" || [ $? -le 1 ] || { cat "$W/first.err" >&2; exit 1; }
rules=$(tail -1 "$W/first.ndjson" | sed -n 's/.*"count":\([0-9]*\).*/\1/p')
echo "rule set: $RULES ($rules rules, $(find -L "$RULES" \( -name '*.yar' -o -name '*.yara' \) | wc -l) files, $(du -shL "$RULES" | cut -f1))"
poll="$V scan --dirty cow --state $W/s.db --rules $RULES --format ndjson $W/top.qcow2"
echo "== process start: vmscope help"
bench_one "$N" "$V" help
echo "== poll of an unchanged image: with the compiled-rules cache (A) vs compiling the rules (B)"
bench_vs "$N" "$poll >/dev/null 2>&1; test \$? -le 1" "$poll --rules-cache off >/dev/null 2>&1; test \$? -le 1"
