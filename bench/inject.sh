#!/usr/bin/env bash
# Cost of `vmscope inject` (issue 17) on the fixture guest of
# testdata/inject/build.sh (200 more processes started first): ls of a
# 1,000-entry directory, cat of a 10 MiB file, ps and stat at each
# --protect level (full only for stat unless VMSCOPE_INJECT_FULL=all:
# single-stepping runs a few thousand instructions a second), with the
# guest's pause time, calls and steps; against, in the same run, the guest
# running the same command itself with its output on its serial console
# (as an in-guest agent would) and vmscope ls / cat of the disk image
# (mem ps of the live guest for ps). Prints the table and the ratios.
# Usage: bash bench/inject.sh
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
cd "$repo"
PATH=$PATH:/usr/local/go/bin
bash testdata/inject/build.sh
mkdir -p bench/out
go build -o bench/out/vmscope ./cmd/vmscope
VMSCOPE_BIN=$repo/bench/out/vmscope go test ./inject/ -run '^$' -bench BenchmarkInjectOps -benchtime 1x -timeout 3h
