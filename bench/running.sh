#!/usr/bin/env bash
# Live dirty polls of a running guest (issue 14): the guest of
# testdata/livedirty (the Debian kernel under QEMU TCG) on a 2 GiB ext4 qcow2
# disk of 50,000 real files (from this machine's /usr), with a background
# writer in the guest counting its iterations. In one run
# (cmd/vmscope BenchmarkRunningGuest): the full live scan of the guest
# (`vmscope scan --guest`, the peer) and `vmscope scan --guest --dirty live
# --state S` after 1% of the files were rewritten by the guest; prints each
# one's time, the bytes it read over NBD, the fleecing image's growth, the
# guest workload's rate during each and idle, and the ratios (goals: a poll
# <= 1/20 of the full live scan, the guest >= 95% of its idle rate, never
# paused: the run fails if query-status, sampled every 10 ms, ever says
# otherwise).
#   N=3 bash bench/running.sh     # N polls, each after its own 1% churn
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=$PATH:/usr/local/go/bin:/usr/sbin:/sbin
bash testdata/livedirty/build.sh
go test -run '^$' -bench BenchmarkRunningGuest -benchtime "${N:-1}x" -timeout 60m -v ./cmd/vmscope/ 2>&1 |
  grep -E 'live_bench_test|Benchmark|^ok|FAIL|^---' 
