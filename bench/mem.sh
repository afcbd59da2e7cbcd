#!/usr/bin/env bash
# vmscope mem ps and mem files on the real-guest fixture's 512 MiB dump (the
# kaslr boot, ELF and kdump-zlib), and on a 2 GiB dump when bench/mem-2g.sh
# has made one: time and peak memory of the whole process (bench/timing.sh),
# and how many bytes of guest memory kernel discovery read (mem info).
# There is no peer figure: Volatility 3 needs pip packages this machine
# does not install.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/timing.sh
G=${VMSCOPE_GUEST:-testdata/out-guest}
V=$PWD/bin/vmscope
go build -o "$V" ./cmd/vmscope
dumps=()
for d in "$G/kaslr" bench/.out/guest-2g; do
  for f in guest.elf guest.kdump; do
    [ -f "$d/$f" ] && dumps+=("$d/$f")
  done
done
[ ${#dumps[@]} -gt 0 ] || { echo "bench: no guest dump (run bash testdata/guest/build.sh)" >&2; exit 1; }
for d in "${dumps[@]}"; do
  echo "== $d ($(du -h --apparent-size "$d" | cut -f1) file, $(du -h "$d" | cut -f1) on disk)"
  "$V" mem info "$d" | grep -E 'memory|discovery read'
  echo "-- mem ps"
  bench_one 5 "$V" mem ps "$d"
  echo "-- mem files"
  bench_one 5 "$V" mem files "$d"
done
