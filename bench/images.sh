#!/usr/bin/env bash
# vmscope reading a disk image whole in each format it reads (VMDK
# monolithicSparse, streamOptimized, monolithicFlat; VHD dynamic and fixed;
# VHDX dynamic and fixed) against `qemu-img convert -O raw` of the same
# file, in the same run, in turn (bench_vs). A is vmscope: the benchmark
# BenchmarkReadImage of internal/imgtest run once as a process (disk.Open
# and 4 MiB ReadAt over the whole disk, as a scan reads); B is qemu-img
# convert -O raw into a file (removed, untimed), and N the same conversion
# into QEMU's null block driver (reading only). The image is bench/common.sh's
# ext4 of /usr (2 GiB, about 1 GiB of files). Goal (issue 19): VMDK/VHDX
# reads at least as fast as qemu-img convert -O raw (A/B wall <= 1).
# Before the timings, each image's full guest view is compared with the
# conversion (cmp): the full-disk conformance of large images that
# `make test` leaves out.
source "$(dirname "$0")/common.sh"
RUNS=${RUNS:-3}  # ONLY=REGEX picks formats by "fmt-subformat" (vpc-dynamic, vhdx-fixed, ...)
go test -c -o "$OUT/imgbench" ./internal/imgtest
SIZE=$(stat -c %s "$IMG")
formats=(
  "vmdk monolithicSparse vmdk subformat=monolithicSparse"
  "vmdk streamOptimized vmdk subformat=streamOptimized"
  "vmdk monolithicFlat vmdk subformat=monolithicFlat"
  "vpc dynamic vhd subformat=dynamic,force_size=on"
  "vpc fixed vhd subformat=fixed,force_size=on"
  "vhdx dynamic vhdx subformat=dynamic"
  "vhdx fixed vhdx subformat=fixed"
)
declare -A summary
for f in "${formats[@]}"; do
  read -r fmt sub ext opts <<< "$f"
  [[ "$fmt-$sub" =~ ${ONLY:-.} ]] || continue # ONLY=REGEX: a subset, e.g. ONLY=vhdx
  F=$OUT/usr-$sub.$ext
  if [ ! -f "$F" ] || [ "$F" -ot "$IMG" ]; then
    qemu-img convert -O "$fmt" -o "$opts" "$IMG" "$F"
  fi
  RAW=$OUT/images-conv.raw
  A="VMSCOPE_BENCH_IMAGES=$F $OUT/imgbench -test.run '^\$' -test.bench ReadImage -test.benchtime 1x"
  echo "== $fmt $sub: $F ($(du -h "$F" | cut -f1) on disk; load average $(cut -d' ' -f1-3 /proc/loadavg))"
  # The whole guest view against the conversion, once.
  qemu-img convert -f "$fmt" -O raw "$F" "$RAW"
  VMSCOPE_BENCH_IMAGES=$F VMSCOPE_BENCH_DUMP=$OUT/images-ours.raw "$OUT/imgbench" -test.run '^$' -test.bench ReadImage -test.benchtime 1x >/dev/null
  cmp "$RAW" "$OUT/images-ours.raw" && echo "bytes: equal to qemu-img convert -O raw ($SIZE bytes)"
  rm -f "$RAW" "$OUT/images-ours.raw"
  PREP_B="rm -f $RAW" bench_vs "$RUNS" "$A" "qemu-img convert -f $fmt -O raw $F $RAW" | tee "$OUT/images-vs.txt"
  rm -f "$RAW"
  bench_vs "$RUNS" "$A" "qemu-img convert -n -f $fmt $F --target-image-opts driver=null-co,size=$SIZE" | grep 'A/B wall' | sed 's#A/B wall#A/N wall#'
  summary[$fmt-$sub]="$(awk '/A\/B wall/ {w = $4} /A\/B cpu/ {c = $4} END {printf "%s (cpu %s)", w, c}' "$OUT/images-vs.txt") load $(cut -d' ' -f1-3 /proc/loadavg)"
done
echo "== median A/B wall (vmscope / qemu-img convert -O raw), goal <= 1; median A/B cpu; load average after:"
for k in "${!summary[@]}"; do printf '%-24s %s\n' "$k" "${summary[$k]}"; done | sort
