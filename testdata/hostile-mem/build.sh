#!/usr/bin/env bash
# Builds the hostile memory files of vmi/linux's discovery tests (see
# main.go for what each holds) into a cache folder named by the hash of
# this script and of the generator, linked as testdata/out-hostile-mem
# (git-ignored). Usage: bash testdata/hostile-mem/build.sh
set -euo pipefail
export LC_ALL=C
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
PATH=$PATH:/usr/local/go/bin

hash=$(cat "$here/build.sh" "$here/main.go" | sha256sum | cut -c1-16)
cache=${VMSCOPE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vmscope}/hostile-mem-$hash
out=$repo/testdata/out-hostile-mem
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

# Builds of other versions untouched for a week are pruned (a recent one
# may belong to another checkout).
find "$(dirname "$cache")" -maxdepth 1 -name 'hostile-mem-*' ! -name '*.lock' ! -name "hostile-mem-$hash" -mtime +7 -exec rm -rf {} + 2>/dev/null || true
rm -rf "$cache"
mkdir -p "$cache"
(cd "$repo" && go run ./testdata/hostile-mem "$cache")
touch "$cache/.done"
link
