#!/usr/bin/env bash
# Builds the rootkit fixture of the kernel integrity checks (package cfi):
# vmscope_rootkit.ko (this folder) built against Debian's linux-headers of
# exactly the guest fixture's kernel (testdata/out-guest/kernel-version:
# linux-headers-KVER, its -common and linux-kbuild, as testdata/guest/build.sh
# builds LiME), an initramfs that is the guest fixture's initrd.gz plus the
# module and init.sh as /init (the guest's own /init kept as /init.guest), and
# one boot per scenario, dumped by QEMU through QMP (guestboot).
#
# Output, in a cache folder named by the hash of this folder's files, the
# boot driver and the guest fixture's kernel and initramfs, linked as
# testdata/out-rootkit (git-ignored):
#   vmscope_rootkit.ko  kernel-version  headers-packages.txt  initrd.gz
#   clean/ sct/ ftrace/ hide/ code/   one boot each (append vmscope.rootkit=NAME):
#     console.log       serial console: the "rootkit" section (what the module
#                       did, with addresses) and the guest fixture's sections
#     guest.elf         dump-guest-memory, ELF
#     registers.txt cpus.json gva2gpa.txt infomem.txt dump-formats.json timing.txt
# Rebuilt only when the hash changes; usage: bash testdata/rootkit/build.sh
set -euo pipefail
export LC_ALL=C
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
PATH=$PATH:/usr/local/go/bin:/usr/sbin:/sbin

bash "$repo/testdata/guest/build.sh"
guest=$(readlink -f "$repo/testdata/out-guest")
kver=$(cat "$guest/kernel-version")

hash=$( (cat "$here/build.sh" "$here/init.sh" "$here/Kbuild" "$here/vmscope_rootkit.c" \
  "$repo/vmi/internal/guesttest/boot.go" "$repo/vmi/internal/guesttest/guestboot/main.go"
  echo "$kver"; sha256sum < "$guest/initrd.gz"; sha256sum < "$guest/vmlinuz") |
  sha256sum | cut -c1-16)
cache=${VMSCOPE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vmscope}/rootkit-$hash
out=$repo/testdata/out-rootkit
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

log() { printf 'rootkit: %s\n' "$*" >&2; }
start=$(date +%s)
for tool in qemu-system-x86_64 cpio gzip dpkg-deb apt-get go gcc-12 make; do
  command -v "$tool" >/dev/null || { log "$tool missing (run scripts/deps.sh)"; exit 1; }
done

# Builds of other versions untouched for a week are pruned.
find "$(dirname "$cache")" -maxdepth 1 -name 'rootkit-*' ! -name '*.lock' ! -name "rootkit-$hash" -mtime +7 -exec rm -rf {} + 2>/dev/null || true
rm -rf "$cache"
mkdir -p "$cache"
cd "$cache"
echo "$kver" > kernel-version

# The module, against the headers of exactly this kernel.
log "vmscope_rootkit.ko for $kver"
mkdir -p dl hdr src
if ! apt-cache show --no-all-versions "linux-headers-$kver" >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq
fi
hdeps=$(apt-cache show --no-all-versions "linux-headers-$kver" | awk -F': ' '/^Depends:/{print $2; exit}')
hver=$(apt-cache show --no-all-versions "linux-headers-$kver" | awk '/^Version:/{print $2; exit}')
dl=("linux-headers-$kver=$hver")
for d in $(echo "$hdeps" | tr ',' '\n' | sed -n 's/^ *\(linux-[a-z0-9.-]*\) (>*= \([^)]*\)).*/\1=\2/p'); do dl+=("$d"); done
(cd dl && apt-get download -q "${dl[@]}" 2>&1 | grep -v '^W: Download is performed unsandboxed' >&2 || true)
for d in dl/*.deb; do dpkg-deb -x "$d" hdr; done
ls dl > headers-packages.txt
hdir=$cache/hdr/usr/src/linux-headers-$kver
[ -d "$hdir" ] || { log "no $hdir after unpacking: $(cat headers-packages.txt)"; exit 1; }
sed -i "s|/usr/src/|$cache/hdr/usr/src/|" "$hdir/Makefile"
cp "$here/Kbuild" "$here/vmscope_rootkit.c" src/
make -s -C "$hdir" M="$cache/src" modules >&2
cp src/vmscope_rootkit.ko .
rm -rf dl hdr src

# The initramfs: the guest fixture's, its /init kept as /init.guest.
log "initramfs"
root=$cache/initramfs
mkdir -p "$root"
(cd "$root" && gzip -dc "$guest/initrd.gz" | cpio -id --quiet)
mv "$root/init" "$root/init.guest"
cp "$here/init.sh" "$root/init"
chmod 755 "$root/init"
cp vmscope_rootkit.ko "$root/lib/modules/"
(cd "$root" && find . -print0 | sort -z | cpio --null -o -H newc --quiet -R 0:0) | gzip -9 > initrd.gz
rm -rf "$root"

# One boot per scenario, KASLR on.
for s in clean sct ftrace hide code; do
  log "boot $s"
  (cd "$repo" && go run ./vmi/internal/guesttest/guestboot \
    -kernel "$guest/vmlinuz" -initrd "$cache/initrd.gz" -append "vmscope.rootkit=$s" \
    -out "$cache/$s" -dumps guest.elf:elf)
  if grep -q '=== FAIL\|error=' "$cache/$s/console.log"; then
    log "scenario $s failed:"; grep '=== FAIL\|error=' "$cache/$s/console.log" >&2; exit 1
  fi
done

touch .done
link
log "done in $(( $(date +%s) - start ))s: $cache"
