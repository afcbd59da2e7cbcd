#!/usr/bin/env bash
# vmscope diff against virt-diff (libguestfs; its appliance runs under TCG
# here, as there is no working KVM) on a 2 GiB disk holding about 800 MB of
# files (this machine's /usr/share and /etc, with /etc/os-release so
# libguestfs's inspection finds an OS), and an overlay in which a few
# hundred paths changed (written by qemu-io from a debugfs-changed copy).
# Prints both times, the ratio, and whether both report the same paths.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=$PATH:/usr/sbin:/sbin
# The peer: libguestfs and a kernel for its appliance (bench-only packages).
if ! command -v virt-diff >/dev/null || ! ls /boot/vmlinuz-* >/dev/null 2>&1; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libguestfs-tools linux-image-cloud-amd64 >/dev/null
fi
export LIBGUESTFS_BACKEND=direct LIBGUESTFS_BACKEND_SETTINGS=force_tcg
V=${VMSCOPE_BIN:-$PWD/bin/vmscope}
[ -n "${VMSCOPE_BIN:-}" ] || go build -o "$V" ./cmd/vmscope
D=bench/.out/diff
mkdir -p "$D"
if [ ! -f "$D/overlay.qcow2" ]; then
  rm -rf "$D/stage" && mkdir -p "$D/stage/usr" "$D/stage/etc"
  cp -a /usr/share "$D/stage/usr/"
  cp -a /etc/os-release /etc/debian_version /etc/hostname /etc/passwd /etc/group "$D/stage/etc/" 2>/dev/null || true
  printf '/dev/sda / ext4 defaults 0 1\n' > "$D/stage/etc/fstab"
  mkdir -p "$D/stage/bin" "$D/stage/sbin" "$D/stage/var/log" "$D/stage/tmp"
  cp /bin/sh "$D/stage/bin/"
  mkfs.ext4 -q -F -b 4096 -d "$D/stage" "$D/base.img" 2G
  cp --sparse=always "$D/base.img" "$D/changed.img"
  # ~300 changed paths: 150 files rewritten, 100 chmod'ed, 50 removed, 20 added.
  find "$D/stage/usr/share/doc" -type f -size +1k | sort | awk 'NR%13==1' | head -320 | sed "s|^$D/stage||" > "$D/victims"
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
echo "== $(du -sh --apparent-size "$D/base.img" | cut -f1) disk; overlay $(du -h "$D/overlay.qcow2" | cut -f1); $(wc -l < "$D/victims") paths changed"
# One timed run of each (virt-diff --checksum under TCG takes many minutes),
# then the paths each reports: vmscope's current and previous paths, and
# virt-diff's "+ - =" lines.
TIMEFORMAT='%R'
echo "vmscope diff wall s: $( { time "$V" diff --format ndjson "$D/base.img" "$D/overlay.qcow2" > "$D/vmscope.out"; } 2>&1 )"
echo "virt-diff --checksum wall s: $( { time virt-diff --checksum -a "$D/base.img" -A "$D/overlay.qcow2" > "$D/virt-diff.out" 2>"$D/virt-diff.err"; } 2>&1 )"
grep -oE '"(path|old_paths)":(\[[^]]*\]|"[^"]*")' "$D/vmscope.out" | grep -oE '"/[^"]*"' | tr -d '"' | sort -u > "$D/vmscope.paths"
grep -E '^[-+=] ' "$D/virt-diff.out" | awk '{print $NF}' | sort -u > "$D/virt-diff.paths"
echo "paths: vmscope $(wc -l < "$D/vmscope.paths"), virt-diff $(wc -l < "$D/virt-diff.paths"), only in virt-diff: $(comm -13 "$D/vmscope.paths" "$D/virt-diff.paths" | wc -l), only in vmscope: $(comm -23 "$D/vmscope.paths" "$D/virt-diff.paths" | wc -l)"
