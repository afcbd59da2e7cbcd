#!/usr/bin/env bash
# Overhead of `vmscope watch` on a running guest (issue 16): the watch
# fixture guest (testdata/watch/build.sh) runs a loop that creates N files
# of 4 KiB, reads, renames and deletes them, timed on the host's clock,
#   - with no monitor,
#   - with 10 watched files the loop never touches (target-based: the
#     cost of QEMU's TLB watchpoint check on their pages),
#   - with operation-based monitoring (breakpoints on vfs_read, vfs_write,
#     notify_change, vfs_unlink, vfs_rename, do_filp_open, filtered on the
#     file: watch.RunOperation),
# interleaved, RUNS runs each, in one run on one host; it prints the
# medians and the slowdowns, then the loop while one watched file is read
# at 1, 10 and 100 Hz without and with target-based watching.
# Usage: bash bench/watch.sh [FILES [RUNS]]   (defaults 5000 5)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
cd "$repo"
PATH=$PATH:/usr/local/go/bin
bash testdata/watch/build.sh
VMSCOPE_WATCH_FILES=${1:-5000} VMSCOPE_WATCH_RUNS=${2:-5} \
  go test ./watch/ -run '^$' -bench BenchmarkWatchOverhead -benchtime 1x -timeout 6h
