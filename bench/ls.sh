#!/usr/bin/env bash
# vmscope ls -r against Sleuth Kit's fls -r, and vmscope extract (a full read
# of every file's content, written out) against debugfs rdump, on the same
# image in the same run. Prints farm-bench's figures with the ratios A/B.
source "$(dirname "$0")/common.sh"
echo "== listing: vmscope ls -r (A) vs fls -r (B)"
farm-bench -n 5 --vs "fls -r $IMG" -- "$V" ls -r "$IMG"
echo "== full read: vmscope extract (A) vs debugfs -R 'rdump / DIR' (B)"
X=$OUT/x; mkdir -p "$X"
farm-bench -n 3 --timeout 600 \
  --vs "sh -c 'rm -rf $X/d && mkdir $X/d && debugfs -R \"rdump / $X/d\" $IMG 2>/dev/null'" \
  -- sh -c "rm -rf $X/v && $V extract $IMG $X/v"
rm -rf "$X"
