#!/usr/bin/env bash
# Cost of `vmscope inject` (issue 17) on the fixture guest of
# testdata/inject/build.sh (VMSCOPE_INJECT_SPAWN more processes started
# first, 200 by default): stat, cat of 256 KiB and of 10 MiB, ls of a
# 1,000-entry directory and ps, each at --protect off, before and full,
# with the guest's pause time, the calls, and per call name the step
# counts of the stepped calls; against, in the same run, the guest running
# the same command itself with its output on its serial console (as an
# in-guest agent would) and vmscope ls / cat of the disk image (mem ps of
# the live guest for ps). Under full, cat of 10 MiB is refused by the
# 1 MiB cap (the refusal is timed). Each row is printed when measured.
# First, BenchmarkStepCost: where a stepped call's time goes (ms per step,
# ms per register read, rep iterations).
#   VMSCOPE_INJECT_OPS=stat,cat256k,cat10m,ls,ps   the operations to run
#   VMSCOPE_INJECT_PS_FULL_BUDGET=10m              ps under full stops there and
#                                                  reports its rate per process
#   VMSCOPE_INJECT_FULL_PS=0                       no ps under full
# Usage: bash bench/inject.sh
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
cd "$repo"
PATH=$PATH:/usr/local/go/bin
bash testdata/inject/build.sh
mkdir -p bench/out
go build -o bench/out/vmscope ./cmd/vmscope
VMSCOPE_INJECT_STEPCOST=1 go test ./inject/ -run '^$' -bench BenchmarkStepCost -benchtime 1x -timeout 1h
VMSCOPE_BIN=$repo/bench/out/vmscope go test ./inject/ -run '^$' -bench BenchmarkInjectOps -benchtime 1x -timeout 6h
