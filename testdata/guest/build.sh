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
#     timing.txt                 seconds to READY, per dump
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
for tool in qemu-system-x86_64 cpio gzip dpkg-deb apt-get go; do
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

touch .done
link
log "done in $(( $(date +%s) - start ))s: $cache"
