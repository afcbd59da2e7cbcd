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
go test -run '^$' -bench . -benchtime 3x ./qcow/ ./fsparse/... ./scan/
