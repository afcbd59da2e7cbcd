#!/usr/bin/env bash
# vmscope diff against virt-diff --checksum (libguestfs) on a 2 GiB disk
# holding about 800 MB of files, and an overlay in which a few hundred paths
# changed (written by qemu-io from a debugfs-changed copy), in one run:
#   A  vmscope diff BASE OVERLAY         (only the ranges the overlay holds)
#   B  vmscope diff --full BASE OVERLAY  (full walk of both, sha256 of every file)
#   C  virt-diff --checksum -a BASE -A OVERLAY, timed once
# then the paths each reports, compared.
# The files: this machine's files of 32 KiB to 8 MiB under /usr/lib and
# /usr/share, in path order, up to 800 MB (about 4,000 files), plus what
# libguestfs's inspection needs to find an OS (/etc/os-release, fstab,
# /bin/sh). Fewer, larger files than the other benches: virt-diff makes a
# few round trips to its appliance per file, and its appliance runs under
# TCG here (no working KVM): about 80 ms a file, two hours for /usr/share's
# 52,000.
#   N=3 bash bench/diff.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/timing.sh
export PATH=$PATH:/usr/sbin:/sbin
N=${N:-3}
# The peer: libguestfs and a kernel for its appliance (bench-only packages).
if ! command -v virt-diff >/dev/null || ! ls /boot/vmlinuz-* >/dev/null 2>&1; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libguestfs-tools linux-image-cloud-amd64 >/dev/null
fi
export LIBGUESTFS_BACKEND=direct LIBGUESTFS_BACKEND_SETTINGS=force_tcg
V=$PWD/bench/.out/diff/vmscope
D=bench/.out/diff
mkdir -p "$D"
go build -o "$V" ./cmd/vmscope
if [ ! -f "$D/overlay.qcow2" ] || [ ! -f "$D/files.list" ]; then
  rm -rf "$D/stage" "$D"/*.img "$D/overlay.qcow2" && mkdir -p "$D/stage/etc"
  find /usr/lib /usr/share -type f -size +32k -size -8192k -printf '%s %p\n' | LC_ALL=C sort -k2 |
    grep -E ' /[A-Za-z0-9._/+-]+$' | awk '{t+=$1; if (t <= 800e6) print $2}' > "$D/files.list"
  sed 's|^/||' "$D/files.list" | tar -C / -cf - -T - | tar -C "$D/stage" -xf -
  cp -a /etc/os-release /etc/debian_version /etc/hostname /etc/passwd /etc/group "$D/stage/etc/" 2>/dev/null || true
  printf '/dev/sda / ext4 defaults 0 1\n' > "$D/stage/etc/fstab"
  mkdir -p "$D/stage/bin" "$D/stage/sbin" "$D/stage/var/log" "$D/stage/tmp"
  cp /bin/sh "$D/stage/bin/"
  mkfs.ext4 -q -F -b 4096 -d "$D/stage" "$D/base.img" 2G
  cp --sparse=always "$D/base.img" "$D/changed.img"
  # ~320 changed paths: 150 files rewritten, 100 chmod'ed, 50 removed, 20 added.
  awk 'NR % 12 == 5' "$D/files.list" | head -320 > "$D/victims"
  {
    i=0
    while read -r p; do
      i=$((i+1))
      if [ $i -le 150 ]; then printf 'rm "%s"\nwrite /etc/hostname "%s"\n' "$p" "$p"
      elif [ $i -le 250 ]; then printf 'sif "%s" mode 0100600\n' "$p"
      elif [ $i -le 300 ]; then printf 'rm "%s"\n' "$p"
      else printf 'write /etc/os-release "/tmp/new-%d"\n' "$i"; fi
    done < "$D/victims"
  } > "$D/debugfs.cmds"
  debugfs -w -f "$D/debugfs.cmds" "$D/changed.img" >/dev/null 2>&1
  (go run ./testdata/blkdiff "$D/base.img" "$D/changed.img" "$D/chunks") > "$D/writes.txt"
  qemu-img create -q -f qcow2 -b "$PWD/$D/base.img" -F raw "$D/overlay.qcow2"
  args=(); while read -r line; do args+=(-c "$line"); done < "$D/writes.txt"
  qemu-io -f qcow2 "${args[@]}" "$D/overlay.qcow2" >/dev/null
  rm -rf "$D/chunks" "$D/changed.img" "$D/stage"
fi
echo "== $(du -sh --apparent-size "$D/base.img" | cut -f1) disk, $(du -sh "$D/base.img" | cut -f1) allocated, $(wc -l < "$D/files.list") files; overlay $(du -h "$D/overlay.qcow2" | cut -f1); $(wc -l < "$D/victims") paths changed"

echo "== A: vmscope diff BASE OVERLAY vs B: vmscope diff --full BASE OVERLAY (full walk of both)"
bench_vs "$N" "$V diff --format ndjson $D/base.img $D/overlay.qcow2 >/dev/null" \
  "$V diff --full --format ndjson $D/base.img $D/overlay.qcow2 >/dev/null"
"$V" diff --format ndjson "$D/base.img" "$D/overlay.qcow2" > "$D/vmscope.out"
"$V" diff --full --format ndjson "$D/base.img" "$D/overlay.qcow2" > "$D/vmscope-full.out"

echo "== C: virt-diff --checksum -a BASE -A OVERLAY (appliance under TCG), one run"
TIMEFORMAT='%R'
C=$( { time virt-diff --checksum -a "$D/base.img" -A "$D/overlay.qcow2" > "$D/virt-diff.out" 2>"$D/virt-diff.err"; } 2>&1 )
echo "virt-diff --checksum wall s: $C"
A=$( { time "$V" diff --format ndjson "$D/base.img" "$D/overlay.qcow2" >/dev/null; } 2>&1 )
echo "vmscope diff wall s (same run): $A; ratio vmscope/virt-diff: $(awk -v a="$A" -v c="$C" 'BEGIN{printf "%.5f", a/c}')"

# The paths: vmscope's current and previous paths of each change; virt-diff's
# "+ -" lines (its last field). Directories whose only change is their size
# or times are left out of both: virt-diff and vmscope do not agree on what
# a directory's change is, and neither is content.
paths() { grep -v '"type":"dir"' "$1" | grep -oE '"(path|old_paths)":(\[[^]]*\]|"[^"]*")' | grep -oE '"/[^"]*"' | tr -d '"' | LC_ALL=C sort -u; }
paths "$D/vmscope.out" > "$D/vmscope.paths"
paths "$D/vmscope-full.out" > "$D/vmscope-full.paths"
# virt-diff: "- TYPE MODE SIZE [SUM] PATH" (only in A), "+ ..." (only in B),
# "= ..." (in both, changed: its text diff follows, up to "@@ End of diff @@").
awk 'body { if ($0 == "@@ End of diff @@") body = 0; next }
     /^= / { body = 1 }
     /^[-+=] [^d] / { print $NF }' "$D/virt-diff.out" | LC_ALL=C sort -u > "$D/virt-diff.paths"
for x in vmscope vmscope-full; do
  echo "paths: $x $(wc -l < "$D/$x.paths"), virt-diff $(wc -l < "$D/virt-diff.paths"); only in virt-diff: $(LC_ALL=C comm -13 "$D/$x.paths" "$D/virt-diff.paths" | wc -l), only in $x: $(LC_ALL=C comm -23 "$D/$x.paths" "$D/virt-diff.paths" | wc -l)"
  LC_ALL=C comm -3 "$D/$x.paths" "$D/virt-diff.paths" | head -5
done
