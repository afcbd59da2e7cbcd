#!/usr/bin/env bash
# make bench: every benchmark script, then the Go benchmarks.
set -euo pipefail
cd "$(dirname "$0")/.."
bash bench/ls.sh
bash bench/scan.sh
bash bench/compressed.sh
bash bench/dirty.sh
bash bench/mem.sh
bash bench/diff.sh
bash bench/images.sh
bash bench/xfs.sh
bash bench/ntfs.sh
bash bench/timeline.sh
# Needs a large public rule set in RULES (default bench/.out/rules), never committed.
if [ -d "${RULES:-bench/.out/rules}" ]; then bash bench/poll-cost.sh; else echo "bench/poll-cost.sh skipped: no RULES"; fi
go test -run '^$' -bench . -benchtime 3x ./qcow/ ./fsparse/... ./scan/
