#!/usr/bin/env bash
# Runs every fuzz target of the module, one at a time, for the given time
# each (default 60s; `make fuzz FUZZTIME=…`). FUZZPKGS=REGEX keeps the
# packages whose import path matches (e.g. FUZZPKGS='fsparse/(xfs|ntfs)').
# A target that fails does not stop the others: each one's result and the
# time it ran are printed at the end, and the exit status is 1 when any
# failed (its failing input is in the package's testdata/fuzz/TARGET, the
# regression seed to commit with the fix). The fuzzers run under nice: the
# machine is shared.
set -uo pipefail
t=${1:-60s}
cd "$(dirname "$0")/.."
summary=()
failed=0
for pkg in $(go list ./...); do
  [[ "$pkg" =~ ${FUZZPKGS:-.} ]] || continue
  dir=$(go list -f '{{.Dir}}' "$pkg")
  for target in $(grep -ho '^func Fuzz[A-Za-z0-9_]*' "$dir"/*_test.go 2>/dev/null | sed 's/^func //' | sort -u); do
    echo "== $pkg $target ($t)"
    start=$(date +%s)
    if nice -n 10 go test -run '^$' -fuzz "^${target}\$" -fuzztime "$t" -fuzzminimizetime 2s "$pkg"; then
      r=ok
    else
      r=FAIL
      failed=1
    fi
    summary+=("$(printf '%-4s %-44s %-24s %ss' "$r" "${pkg#github.com/vmscope/vmscope/}" "$target" $(($(date +%s) - start)))")
  done
done
echo "== fuzz summary ($t each)"
printf '%s\n' "${summary[@]}"
exit $failed
