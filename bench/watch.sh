#!/usr/bin/env bash
# Overhead of `vmscope watch` on a running guest (issue 16): the watch
# fixture guest (testdata/watch/build.sh) runs a loop that creates N files
# of 4 KiB, reads, renames and deletes them, timed on the host's clock and
# by the CPU time QEMU spends (robust to other load on a shared host),
#   - none:      no monitor,
#   - target:    10 watched files the loop never touches (target-based),
#   - check:     one write watch on a field the loop never writes of its
#                own directory's inode, a page it touches on every
#                operation: the cost of QEMU's TLB watchpoint check alone,
#   - cold:      90 write watches (as many as target's) on the kernel's
#                empty_zero_page, which nothing writes: what the number of
#                watchpoints costs QEMU whatever the pages,
#   - operation: operation-based monitoring (breakpoints on vfs_read,
#                vfs_write, notify_change, vfs_unlink, vfs_rename,
#                do_filp_open, filtered on the file: watch.RunOperation),
# interleaved, RUNS runs each, in one run on one host; it prints the
# medians and slowdowns and where every stop came from, then the loop
# while one watched file is read at 1, 10 and 100 Hz without and with
# target-based watching (stops per second). Operation-based monitoring
# stops on every file operation (~7 per file): OPFILES (default FILES)
# sizes its own loop, measured in a second run against its own baseline.
# Last, BenchmarkLibVMIFalseTriggers: the false-trigger rate LibVMI's
# per-page events would have, from 8-byte watches covering the watched
# objects' pages (LVFILES files).
# Usage: bash bench/watch.sh [FILES [RUNS [OPFILES [LVFILES]]]]   (defaults 5000 5 FILES 200)
# More: VMSCOPE_WATCH_METHODS (none,target,check,cold,operation; also
# inode, dentry, writes: target's watches split),
# VMSCOPE_WATCH_HZ (1,10,100), VMSCOPE_WATCH_STOPS=1 prints every stop.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
cd "$repo"
PATH=$PATH:/usr/local/go/bin
bash testdata/watch/build.sh
files=${1:-5000} runs=${2:-5}
opfiles=${3:-$files} lvfiles=${4:-200}
if [ "$opfiles" = "$files" ]; then
  VMSCOPE_WATCH_FILES=$files VMSCOPE_WATCH_RUNS=$runs \
    go test ./watch/ -run '^$' -bench '^BenchmarkWatchOverhead$' -benchtime 1x -timeout 6h
else
  VMSCOPE_WATCH_FILES=$files VMSCOPE_WATCH_RUNS=$runs VMSCOPE_WATCH_METHODS=none,target,check,cold \
    go test ./watch/ -run '^$' -bench '^BenchmarkWatchOverhead$' -benchtime 1x -timeout 6h
  VMSCOPE_WATCH_FILES=$opfiles VMSCOPE_WATCH_RUNS=$runs VMSCOPE_WATCH_METHODS=none,target,operation VMSCOPE_WATCH_HZ=0 \
    go test ./watch/ -run '^$' -bench '^BenchmarkWatchOverhead$' -benchtime 1x -timeout 6h
fi
VMSCOPE_WATCH_FILES=$lvfiles go test ./watch/ -run '^$' -bench '^BenchmarkLibVMIFalseTriggers$' -benchtime 1x -timeout 2h
