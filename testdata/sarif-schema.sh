#!/usr/bin/env bash
# Fetches the SARIF 2.1.0 JSON schema (OASIS 2.1.0-rtm.5, draft-04) from the
# npm package Microsoft ships it in (@microsoft/jest-sarif, pinned; `npm pack`,
# no install scripts run) into the cache, checks its sha256, and prints its
# path. The scan tests validate vmscope's SARIF output against it
# (scan/report_test.go, cmd/vmscope/scan_test.go). Cached: a second run only
# prints the path.
set -euo pipefail
pkg=@microsoft/jest-sarif@1.0.0-beta.0
file=package/lib/schemas/sarif-2.1.0-rtm.5.json
sum=2d99159ae54a3eea97f81781cff48780548657c35949f4b7f25e99a2ba4de4f8
cache=${VMSCOPE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vmscope}/sarif-schema
out=$cache/sarif-2.1.0-rtm.5.json
if [ -f "$out" ] && echo "$sum  $out" | sha256sum -c --quiet - 2>/dev/null; then
  echo "$out"
  exit 0
fi
command -v npm >/dev/null || { echo "sarif-schema.sh: npm missing (the machine provides Node.js and npm)" >&2; exit 1; }
mkdir -p "$cache"
tmp=$(mktemp -d "$cache/tmp.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent "$pkg" >/dev/null && tar xzf ./*.tgz "$file")
echo "$sum  $tmp/$file" | sha256sum -c --quiet - || { echo "sarif-schema.sh: $pkg: schema checksum differs" >&2; exit 1; }
mv "$tmp/$file" "$out"
echo "$out"
