#!/usr/bin/env bash
# Builds the module fixtures of the scan tests into testdata/out-modules
# (git-ignored; a link to a cache folder named by the hash of this folder's
# files): real PE and ELF binaries whose structures lie past the first 4 MiB
# scan block, made by Debian's mingw-w64 and gcc.
#
#   files/pe/pad-SIZE.exe    x86_64-w64-mingw32-gcc; a SIZE-byte initialized
#                            array in .rdata comes before .idata, so the import
#                            directory (kernel32.dll, user32.dll MessageBoxA)
#                            lies past SIZE
#   files/elf/pad-SIZE       gcc; the same array in .rodata: the section header
#                            table and .shstrtab (at the end of an ELF file)
#                            lie past SIZE
#   modules.img              ext4 of files/ (mkfs.ext4 -d)
#   layout.txt               where the structures are (objdump, readelf), for
#                            the test to check that they really are past 4 MiB
#
# SIZE: 64 KiB (one block), 5 MiB and 7 MiB (past the first block, within a
# --module-max-size of 8 MiB) and 12 MiB (past that bound).
set -euo pipefail
export LC_ALL=C
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$(dirname "$here")")
PATH=$PATH:/usr/sbin:/sbin

hash=$(cat "$here"/build.sh "$here"/*.c "$here"/*.yar | sha256sum | cut -c1-16)
cache=${VMSCOPE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vmscope}/modules-$hash
out=$repo/testdata/out-modules
mkdir -p "$(dirname "$cache")"
# One build at a time per cache folder (parallel checkouts share the cache).
exec 9>"$cache.lock"
flock 9

if [ -f "$cache/.done" ]; then
  if [ "$(readlink "$out" 2>/dev/null)" != "$cache" ]; then
    rm -rf "$out"
    ln -s "$cache" "$out"
  fi
  exit 0
fi

for tool in x86_64-w64-mingw32-gcc x86_64-w64-mingw32-objdump gcc readelf mkfs.ext4; do
  command -v "$tool" >/dev/null || { echo "modules/build.sh: $tool missing (run scripts/deps.sh)" >&2; exit 1; }
done

# Builds of other versions of this script untouched for a week are pruned.
find "$(dirname "$cache")" -maxdepth 1 -name 'modules-*' ! -name "modules-$hash" ! -name '*.lock' -mtime +7 -exec rm -rf {} + 2>/dev/null || true
rm -rf "$cache"
mkdir -p "$cache/files/pe" "$cache/files/elf"
cd "$cache"
log() { printf 'modules: %s\n' "$*" >&2; }

: > layout.txt
for size in 65536 5242880 7340032 12582912; do
  log "pad $size"
  x86_64-w64-mingw32-gcc -O1 -DPAD="$size" -o "files/pe/pad-$size.exe" "$here/pad.c" -luser32
  gcc -O1 -DPAD="$size" -o "files/elf/pad-$size" "$here/pad.c"
  # Import directory RVA and the file offset of the section holding it.
  off=$(x86_64-w64-mingw32-objdump -h "files/pe/pad-$size.exe" | awk '$2 == ".idata" { print $6 }')
  echo "pe/pad-$size.exe idata_file_offset $((16#$off))" >> layout.txt
  readelf -h "files/elf/pad-$size" |
    awk -v f="elf/pad-$size" '/Start of section headers/ { print f, "shoff", $5 }' >> layout.txt
done
cp "$here/modules.yar" .

log "modules.img"
mkfs.ext4 -q -F -b 4096 -E root_owner=0:0 -d files modules.img 96M 2>&1 | grep -v '^Creating regular file' >&2 || true

chmod a-w modules.img
touch .done
rm -rf "$out"
ln -s "$cache" "$out"
log "done: $out -> $cache"
