#!/usr/bin/env bash
# Builds the real-guest fixture that vmi tests share: the current Debian cloud
# kernel booted under QEMU (TCG) on a busybox-static initramfs whose /init
# (testdata/guest/init.sh) sets up a known scenario and prints the guest's own
# view of it (ps, /proc/PID/status and fd, modules, mounts, kallsyms) to the
# serial console. Each boot is dumped by QEMU itself through QMP.
#
# Output, in a cache folder named by the hash of what makes it (this script,
# init.sh, the threaded helper and the boot driver), linked as
# testdata/out-guest (git-ignored):
#   vmlinuz System.map config kernel-version initrd.gz
#   kernel/                      the unpacked linux-image-*-cloud-amd64 package
#   kaslr/ nokaslr/ la57/        one boot each (KASLR on; "nokaslr"; -cpu max,
#                                i.e. 5-level paging, KASLR on):
#     console.log                serial console: the ground truth sections
#     guest.elf                  dump-guest-memory, ELF, paging=false
#     guest.kdump                dump-guest-memory, kdump-zlib
#     registers.txt              HMP "info registers" of the stopped guest
#     gva2gpa.txt                HMP "gva2gpa" of kernel symbols: NAME VA GPA
#     infomem.txt                HMP "info mem" (the active page tables' mappings;
#                                empty under LA57, where QEMU 7.2 prints nothing)
#     cpus.json                  QMP query-cpus-fast
#     dump-formats.json          QMP query-dump-guest-memory-capability
#     timing.txt                 seconds to READY, per dump
#   writers/                     one more boot (KASLR on, 256 MiB, vmscope.writers:
#                                see init.sh) for dumps written by other tools:
#     guest.lime                 LiME 1.9.1 (Debian lime-forensics-dkms, built here
#                                against the kernel's linux-headers), run inside the
#                                guest before the truth is printed
#     console.log registers.txt ... dump-formats.json   as above, after READY
#     guest.elf                  dump-guest-memory, ELF, right after LiME's dump
#     qemu-zlib.kdump qemu-lzo.kdump qemu-snappy.kdump
#                                dump-guest-memory kdump-zlib, and -lzo and -snappy when
#                                this QEMU offers them (Debian 12's QEMU 7.2 is built
#                                without: dump-formats.json), same moment as guest.elf
#     md-zlib.kdump md-lzo.kdump makedumpfile -c / -l -d 0 of guest.elf (its program
#                                headers moved next to the ELF header for makedumpfile 1.7.2)
#     md-lzo.flat                makedumpfile -F -l -d 0 (flattened)
#     makedumpfile.txt           makedumpfile -v: the version and its compressions
# Rebuilt only when the hash changes; usage: bash testdata/guest/build.sh
set -euo pipefail
export LC_ALL=C
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
PATH=$PATH:/usr/local/go/bin:/usr/sbin:/sbin

hash=$(cat "$here/build.sh" "$here/init.sh" "$here/threader/main.go" \
  "$repo/vmi/internal/guesttest/boot.go" "$repo/vmi/internal/guesttest/guestboot/main.go" |
  sha256sum | cut -c1-16)
cache=${VMSCOPE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vmscope}/guest-$hash
out=$here/../out-guest
mkdir -p "$(dirname "$cache")"
# One build at a time per cache folder (parallel checkouts share the cache).
exec 9>"$cache.lock"
flock 9

link() {
  if [ "$(readlink "$out" 2>/dev/null)" != "$cache" ]; then
    rm -rf "$out"
    ln -s "$cache" "$out"
  fi
}
if [ -f "$cache/.done" ]; then link; exit 0; fi

log() { printf 'guest: %s\n' "$*" >&2; }
start=$(date +%s)

need=()
for tool in qemu-system-x86_64 cpio gzip dpkg-deb apt-get go makedumpfile gcc-12 make debugfs mkfs.ext4; do
  command -v "$tool" >/dev/null || need+=("$tool")
done
if [ ${#need[@]} -gt 0 ] || ! dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q 'install ok installed'; then
  log "installing dependencies (${need[*]:-busybox-static})"
  bash "$repo/scripts/deps.sh"
fi

# Builds of other versions untouched for a week are pruned (a recent one may
# belong to another checkout); guest-disk-* builds are not ours.
find "$(dirname "$cache")" -maxdepth 1 -name 'guest-*' ! -name 'guest-disk-*' ! -name '*.lock' ! -name "guest-$hash" -mtime +7 -exec rm -rf {} + 2>/dev/null || true
rm -rf "$cache"
mkdir -p "$cache"
cd "$cache"

# The kernel: whatever linux-image-cloud-amd64 depends on today.
kpkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-/{print $2; exit}')
if [ -z "$kpkg" ]; then
  log "apt-get update"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq
  kpkg=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-/{print $2; exit}')
fi
[ -n "$kpkg" ] || { log "cannot resolve linux-image-cloud-amd64"; exit 1; }
log "kernel package $kpkg"
mkdir -p dl
(cd dl && apt-get download -q "$kpkg" 2>&1 | grep -v '^W: Download is performed unsandboxed' >&2 || true)
deb=$(ls dl/"$kpkg"_*.deb)
dpkg-deb -x "$deb" kernel
kver=${kpkg#linux-image-}
echo "$kver" > kernel-version
cp "kernel/boot/vmlinuz-$kver" vmlinuz
cp "kernel/boot/System.map-$kver" System.map
cp "kernel/boot/config-$kver" config
rm -rf dl

# The initramfs: busybox-static, the scenario /init, two modules, threader.
log "initramfs"
root=$cache/initramfs
mkdir -p "$root"/{bin,sbin,dev,proc,sys,tmp,root,lib/modules}
cp /bin/busybox "$root/bin/busybox"
for applet in $(/bin/busybox --list); do
  [ -e "$root/bin/$applet" ] || ln -s busybox "$root/bin/$applet"
done
cp "$here/init.sh" "$root/init"
chmod 755 "$root/init"
moddir=kernel/lib/modules/$kver/kernel
for m in drivers/net/dummy.ko crypto/crc32_generic.ko; do
  cp "$moddir/$m" "$root/lib/modules/"
done
(cd "$repo" && CGO_ENABLED=0 go build -trimpath -o "$root/bin/threader" ./testdata/guest/threader)
(cd "$root" && find . -print0 | sort -z | cpio --null -o -H newc --quiet -R 0:0) | gzip -9 > initrd.gz

# The writers boot's initramfs: the same, with the virtio-blk chain,
# qemu_fw_cfg and LiME built against this kernel's headers (Debian
# packages, unpacked here: linux-headers-KVER, its -common and the
# linux-kbuild it depends on, lime-forensics-dkms's source).
log "LiME for $kver"
mkdir -p dl hdr
hdeps=$(apt-cache show --no-all-versions "linux-headers-$kver" | awk -F': ' '/^Depends:/{print $2; exit}')
hver=$(apt-cache show --no-all-versions "linux-headers-$kver" | awk '/^Version:/{print $2; exit}')
dl=("linux-headers-$kver=$hver" lime-forensics-dkms)
for d in $(echo "$hdeps" | tr ',' '\n' | sed -n 's/^ *\(linux-[a-z0-9.-]*\) (>*= \([^)]*\)).*/\1=\2/p'); do dl+=("$d"); done
(cd dl && apt-get download -q "${dl[@]}" 2>&1 | grep -v '^W: Download is performed unsandboxed' >&2 || true)
for d in dl/*.deb; do dpkg-deb -x "$d" hdr; done
hdir=$cache/hdr/usr/src/linux-headers-$kver
sed -i "s|/usr/src/|$cache/hdr/usr/src/|" "$hdir/Makefile"
limesrc=$(ls -d "$cache"/hdr/usr/src/lime-forensics-*)
make -s -C "$hdir" M="$limesrc" modules >&2
cp "$limesrc/lime.ko" "$root/lib/modules/"
ls dl > writers-packages.txt
rm -rf dl hdr
for m in virtio/virtio_ring virtio/virtio virtio/virtio_pci_legacy_dev virtio/virtio_pci_modern_dev virtio/virtio_pci block/virtio_blk firmware/qemu_fw_cfg; do
  cp "$moddir/drivers/$m.ko" "$root/lib/modules/"
done
(cd "$root" && find . -print0 | sort -z | cpio --null -o -H newc --quiet -R 0:0) | gzip -9 > initrd-writers.gz
rm -rf "$root"

# The boots: KASLR on (the default), nokaslr, and 5-level paging (QEMU's
# "max" CPU has LA57, which the Debian kernel uses), KASLR on.
boot() {
  log "boot $1 (append '$2', cpu '${3:-default}')"
  (cd "$repo" && go run ./vmi/internal/guesttest/guestboot \
    -kernel "$cache/vmlinuz" -initrd "$cache/initrd.gz" -append "$2" -cpu "${3:-}" -out "$cache/$1")
}
boot kaslr ""
boot nokaslr "nokaslr"
boot la57 "" max

# The writers boot: LiME inside the guest onto an ext4 virtio disk, then
# QEMU's dumps in each format it offers, then makedumpfile over the ELF.
log "boot writers"
w=$cache/writers
mkdir -p "$w"
truncate -s 400M "$w/disk.img"
# Inode tables and journal initialised now: no ext4lazyinit thread in the
# guest, which would end between LiME's moment and QEMU's.
mkfs.ext4 -q -F -E root_owner=0:0,lazy_itable_init=0,lazy_journal_init=0 "$w/disk.img"
(cd "$repo" && go run ./vmi/internal/guesttest/guestboot \
  -kernel "$cache/vmlinuz" -initrd "$cache/initrd-writers.gz" -append "vmscope.writers" -mem 256 -out "$w" \
  -qemu -device -qemu vmcoreinfo -qemu -drive -qemu "file=$w/disk.img,format=raw,if=virtio" \
  -dumps guest.elf:elf,qemu-zlib.kdump:kdump-zlib,qemu-lzo.kdump:kdump-lzo?,qemu-snappy.kdump:kdump-snappy?)
if grep -q '=== FAIL' "$w/console.log"; then log "writers boot failed:"; grep '=== FAIL' "$w/console.log" >&2; exit 1; fi
debugfs -R "dump /guest.lime $w/guest.lime" "$w/disk.img" 2>/dev/null
[ -s "$w/guest.lime" ] || { log "no LiME dump on the disk"; exit 1; }
rm "$w/disk.img"
t=$(date +%s)
# makedumpfile 1.7.2 reads the program headers right after the ELF header
# (as /proc/vmcore lays them out: it ignores e_phoff), where QEMU 7.2 puts
# its section headers: its input is a copy whose program headers are moved
# there (e_phoff 64, no sections; the notes and memory stay where they are).
in=$w/md-input.elf
cp "$w/guest.elf" "$in"
chmod u+w "$in"
phoff=$(od -An -t u8 -j 32 -N 8 "$in" | tr -d ' ')
phnum=$(od -An -t u2 -j 56 -N 2 "$in" | tr -d ' ')
dd if="$w/guest.elf" of="$in" bs=1 skip="$phoff" seek=64 count=$((phnum * 56)) conv=notrunc status=none
printf '\x40\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0' | dd of="$in" bs=1 seek=32 conv=notrunc status=none # e_phoff, e_shoff
printf '\x40\0' | dd of="$in" bs=1 seek=52 conv=notrunc status=none                             # e_ehsize
printf '\0\0\0\0\0\0' | dd of="$in" bs=1 seek=58 conv=notrunc status=none                         # e_shentsize, e_shnum, e_shstrndx
makedumpfile -v > "$w/makedumpfile.txt" 2>&1
for c in "-c md-zlib.kdump" "-l md-lzo.kdump"; do
  set -- $c
  makedumpfile "$1" -d 0 "$in" "$w/$2" 2>&1 | tr '\r' '\n' | grep -v '^Checking\|^Copying\|^$' >> "$w/makedumpfile.txt"
  [ -s "$w/$2" ] || { log "makedumpfile $1 failed:"; cat "$w/makedumpfile.txt" >&2; exit 1; }
done
makedumpfile -F -l -d 0 "$in" > "$w/md-lzo.flat" 2>> "$w/makedumpfile.txt"
rm "$in"
echo "makedumpfile $(( $(date +%s) - t ))" >> "$w/timing.txt"

touch .done
link
log "done in $(( $(date +%s) - start ))s: $cache"
