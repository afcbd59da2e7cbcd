#!/usr/bin/env bash
# Builds the fixture fleet of the fleet tests with the real tools into
# testdata/out-fleet (git-ignored; a link to ~/.cache/vmscope/fleet-HASH,
# named by the hash of this script and of the rules, built under flock).
#
#   base-a.img          raw ext4 (mkfs.ext4 -d), holding a marker file
#   base-b.qcow2        qcow2 of an ext4 made the same way, another tree
#   ov-a-NN.qcow2       8 qcow2 overlays on base-a.img (backing raw): each the
#   ov-b-NN.qcow2       8 on base-b.qcow2: the base with debugfs changes
#                       (files written, some with markers; a marked base file
#                       removed or overwritten in some), made by qemu-img
#                       convert -B, so the overlay holds only the changes
#   raw-NN.img          4 raw ext4 images of their own (two with a marker)
#   q-NN.qcow2          2 standalone qcow2 images
#   corrupt.qcow2       a qcow2 whose L1 table offset points past the file
#   snap-2.img          the raw disk of ov-a-03 (base-a.img changed): with
#                       base-a.img, the snapshot pair of the dirty/ebs test
#   inventory.ndjson    every image above but snap-2, plus "gone" (a
#                       missing file): 26
#   rules.yar           the rules of the tests
set -euo pipefail
export LC_ALL=C
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$(dirname "$here")")
PATH=$PATH:/usr/sbin:/sbin
hash=$(cat "$here/build.sh" "$here/rules.yar" | sha256sum | cut -c1-16)
cache=${VMSCOPE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vmscope}/fleet-$hash
out=$repo/testdata/out-fleet
mkdir -p "$(dirname "$cache")"
exec 9>"$cache.lock"
flock 9
link() { if [ "$(readlink "$out" 2>/dev/null)" != "$cache" ]; then rm -rf "$out"; ln -s "$cache" "$out"; fi; }
if [ -f "$cache/.done" ]; then link; exit 0; fi
for tool in mkfs.ext4 debugfs qemu-img; do
  command -v "$tool" >/dev/null || { echo "fleet/build.sh: $tool missing (run scripts/deps.sh)" >&2; exit 1; }
done
rm -rf "$cache"
mkdir -p "$cache"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export E2FSPROGS_FAKE_TIME=1700000000 # reproducible filesystem times

# tree DIR SEED MARKER: a small tree of deterministic files; MARKER (when
# not empty) goes into one file.
tree() {
  local d=$1 seed=$2 marker=$3
  mkdir -p "$d/etc" "$d/usr/bin" "$d/var/log" "$d/home/user"
  for i in $(seq 1 12); do
    printf 'file %s %s\n%s\n' "$seed" "$i" "$(seq "$i" $((i * 40)))" > "$d/usr/bin/tool$i"
  done
  for i in 1 2 3; do printf 'log %s line %s\n' "$seed" "$i" > "$d/var/log/app$i.log"; done
  printf 'root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/home/user:/bin/sh\n' > "$d/etc/passwd"
  printf 'hostname-%s\n' "$seed" > "$d/etc/hostname"
  if [ -n "$marker" ]; then printf 'payload %s\n' "$marker" > "$d/home/user/dropper.sh"; fi
}
mkext4() { # IMG DIR UUID
  mkfs.ext4 -q -F -b 4096 -U "$3" -E root_owner=0:0 -d "$2" "$1" 16M
}

tree "$work/ta" a VMSCOPE_FLEET_BASE_MARKER
tree "$work/tb" b ""
mkext4 "$cache/base-a.img" "$work/ta" 0f1ee7a0-0000-4000-8000-00000000000a
mkext4 "$work/base-b.raw" "$work/tb" 0f1ee7a0-0000-4000-8000-00000000000b
qemu-img convert -q -f raw -O qcow2 "$work/base-b.raw" "$cache/base-b.qcow2"

# overlay BASE_RAW BASE_FILE BASE_FMT NAME N: the base changed by debugfs
# (a new file each; a marker every third; the base marker removed in
# overlay 2 and overwritten clean in overlay 5), as an overlay.
overlay() {
  local raw=$1 base=$2 fmt=$3 name=$4 n=$5
  cp "$raw" "$work/$name.raw"
  printf 'overlay %s data\n' "$name" > "$work/$name.new"
  printf 'payload VMSCOPE_FLEET_OVERLAY_MARKER %s\n' "$name" > "$work/$name.bad"
  printf 'clean replacement %s\n' "$name" > "$work/$name.clean"
  {
    echo "write $work/$name.new /var/log/$name.log"
    echo "write $work/$name.new /usr/bin/tool$n.new"
    [ $((n % 3)) -eq 0 ] && echo "write $work/$name.bad /home/user/$name.sh"
    if [ "$n" -eq 2 ]; then echo "rm /home/user/dropper.sh"; fi
    if [ "$n" -eq 5 ]; then echo "rm /home/user/dropper.sh"; echo "write $work/$name.clean /home/user/dropper.sh"; fi
    echo "rm /var/log/app1.log"
  } > "$work/$name.cmd"
  debugfs -w -f "$work/$name.cmd" "$work/$name.raw" >/dev/null 2>&1
  qemu-img convert -q -f raw -O qcow2 -B "$(basename "$base")" -F "$fmt" "$work/$name.raw" "$cache/$name.qcow2.tmp"
  # convert -B needs the backing file resolvable from the output's folder.
  mv "$cache/$name.qcow2.tmp" "$cache/$name.qcow2"
  if [ "$name" = ov-a-03 ]; then mv "$work/$name.raw" "$cache/snap-2.img"; fi
  rm -f "$work/$name.raw"
}
cd "$cache"
for n in 1 2 3 4 5 6 7 8; do
  overlay "$cache/base-a.img" base-a.img raw "ov-a-0$n" "$n"
  overlay "$work/base-b.raw" base-b.qcow2 qcow2 "ov-b-0$n" "$n"
done

for n in 1 2 3 4; do
  marker=""
  [ $((n % 2)) -eq 0 ] && marker="VMSCOPE_FLEET_RAW_MARKER raw-0$n"
  tree "$work/raw$n" "raw$n" "$marker"
  mkext4 "$cache/raw-0$n.img" "$work/raw$n" "0f1ee7a0-0000-4000-8000-0000000001$n$n"
done
for n in 1 2; do
  tree "$work/q$n" "q$n" "$([ "$n" -eq 1 ] && echo VMSCOPE_FLEET_RAW_MARKER q-01)"
  mkext4 "$work/q$n.raw" "$work/q$n" "0f1ee7a0-0000-4000-8000-0000000002$n$n"
  qemu-img convert -q -f raw -O qcow2 "$work/q$n.raw" "$cache/q-0$n.qcow2"
done
cp "$cache/q-02.qcow2" "$cache/corrupt.qcow2"
# l1_table_offset (header bytes 40..47, big-endian) far past the file.
printf '\x00\x00\x7f\x00\x00\x00\x00\x00' | dd of="$cache/corrupt.qcow2" bs=1 seek=40 conv=notrunc status=none

cp "$here/rules.yar" "$cache/rules.yar"
{
  for f in base-a.img base-b.qcow2 ov-a-0?.qcow2 ov-b-0?.qcow2 raw-0?.img q-0?.qcow2 corrupt.qcow2; do
    printf '{"id":"%s","path":"%s"}\n' "${f%.*}" "$f"
  done
  printf '{"id":"gone","path":"gone.qcow2","labels":{"why":"missing image"}}\n'
} > "$cache/inventory.ndjson"
touch "$cache/.done"
link
