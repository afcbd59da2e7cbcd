#!/usr/bin/env bash
# vmscope ls -r against Sleuth Kit's fls -r, and vmscope extract (a full read
# of every file's content, written out) against debugfs rdump, on the same
# image in the same run. Prints the figures with the ratios A/B (bench/timing.sh).
source "$(dirname "$0")/common.sh"
echo "== listing: vmscope ls -r (A) vs fls -r (B)"
bench_vs 7 "$V ls -r $IMG" "fls -r $IMG"
echo "== full read: vmscope extract (A) vs debugfs -R 'rdump / DIR' (B)"
# Both write the tree to tmpfs when there is one, so the figure is the read
# and the file creation, not the disk's write-back.
X=$OUT/x
[ -d /dev/shm ] && X=/dev/shm/vmscope-bench
mkdir -p "$X"
bench_vs 3 "rm -rf $X/v && $V extract $IMG $X/v" \
  "rm -rf $X/d && mkdir $X/d && debugfs -R 'rdump / $X/d' $IMG 2>/dev/null"
rm -rf "$X"
