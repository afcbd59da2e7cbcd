#!/usr/bin/env bash
# Boots the real-guest fixture's kernel and initrd (testdata/guest/build.sh
# makes them) once more with -m 2048 and dumps it (ELF and kdump-zlib) into
# bench/.out/guest-2g, for bench/mem.sh. About a minute under TCG; 2.2 GB of
# disk. Nothing is done when the dumps are there.
set -euo pipefail
cd "$(dirname "$0")/.."
G=${VMSCOPE_GUEST:-testdata/out-guest}
OUT=bench/.out/guest-2g
if [ -f "$OUT/guest.elf" ] && [ -f "$OUT/guest.kdump" ]; then
  echo "2 GiB dumps already in $OUT"
  exit 0
fi
for f in vmlinuz initrd.gz; do
  [ -f "$G/$f" ] || { echo "bench: $G/$f missing (run bash testdata/guest/build.sh)" >&2; exit 1; }
done
rm -rf "$OUT"
mkdir -p "$OUT"
go run ./vmi/internal/guesttest/guestboot -kernel "$G/vmlinuz" -initrd "$G/initrd.gz" -mem 2048 -out "$OUT"
cat "$OUT/timing.txt"
