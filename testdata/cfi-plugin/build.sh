#!/usr/bin/env bash
# Builds the fixtures of the live cfi tests and bench/cfi.sh into
# testdata/out-cfi-plugin (git-ignored; a link to a cache folder named by the
# hash of this folder's files):
#   cfi-plugin.so   the QEMU TCG plugin of `cfi --source plugin` (gcc)
#   initrd.gz       the guest fixture's initramfs with init.sh as /init: the
#                   benign workload; the rootkit module of testdata/rootkit
#                   as /lib/modules/vmscope_rootkit.ko when that fixture is
#                   built (testdata/out-rootkit), then also a file rootkit
# It reuses testdata/out-guest (vmlinuz, initrd.gz): run
# testdata/guest/build.sh first.
set -euo pipefail
export LC_ALL=C
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$(dirname "$here")")
guest=$repo/testdata/out-guest
rootkit=$repo/testdata/out-rootkit/vmscope_rootkit.ko

# The rootkit fixture first when this checkout has it (make fixtures order).
if [ -f "$repo/testdata/rootkit/build.sh" ]; then bash "$repo/testdata/rootkit/build.sh"; fi
[ -f "$guest/initrd.gz" ] || { echo "cfi-plugin/build.sh: $guest/initrd.gz missing (run testdata/guest/build.sh)" >&2; exit 1; }
rk=none
[ -f "$rootkit" ] && rk=$(sha256sum < "$rootkit" | cut -c1-16)
hash=$( (cat "$here"/build.sh "$here"/*.c "$here"/init.sh; sha256sum < "$guest/initrd.gz"; echo "$rk") | sha256sum | cut -c1-16)
cache=${VMSCOPE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vmscope}/cfi-plugin-$hash
out=$repo/testdata/out-cfi-plugin
mkdir -p "$(dirname "$cache")"
exec 9>"$cache.lock"
flock 9

if [ -f "$cache/.done" ]; then
  if [ "$(readlink "$out" 2>/dev/null)" != "$cache" ]; then
    rm -rf "$out"
    ln -s "$cache" "$out"
  fi
  exit 0
fi
for tool in gcc cpio gzip; do
  command -v "$tool" >/dev/null || { echo "cfi-plugin/build.sh: $tool missing (run scripts/deps.sh)" >&2; exit 1; }
done
find "$(dirname "$cache")" -maxdepth 1 -name 'cfi-plugin-*' ! -name "cfi-plugin-$hash" ! -name '*.lock' -mtime +7 -exec rm -rf {} + 2>/dev/null || true
rm -rf "$cache"
mkdir -p "$cache/root"
cd "$cache"
gcc -O2 -Wall -Wextra -Werror -shared -fPIC -fvisibility=hidden -o cfi-plugin.so "$here/cfi-plugin.c" -lpthread
(cd root && zcat "$guest/initrd.gz" | cpio -id --quiet)
install -m 0755 "$here/init.sh" root/init
if [ "$rk" != none ]; then
  install -m 0644 "$rootkit" root/lib/modules/vmscope_rootkit.ko
  echo "$rk" > rootkit
fi
(cd root && find . | sort | cpio -o -H newc --quiet -R 0:0) | gzip -9 > initrd.gz
rm -rf root
touch .done
rm -rf "$out"
ln -s "$cache" "$out"
