#!/usr/bin/env bash
# vmscope timeline against Sleuth Kit's fls -r -m /, and vmscope ls -r
# --deleted against fls -r -d, on the bench image (bench/common.sh: this
# machine's /usr/share, /usr/bin and /usr/include, about 60,000 files) from
# which debugfs deleted every 20th file of /usr/share/doc and
# /usr/include (bench/.out/usr-del.img, made once). First the outputs are
# compared (sorted; the differing lines are TSK's named classes, see
# timeline/fls_test.go), then each pair is timed in turn (bench/timing.sh)
# and the ratio A/B printed. Goal: A/B <= 0.5.
source "$(dirname "$0")/common.sh"
go build -o "$V" ./cmd/vmscope
DEL=$OUT/usr-del.img
if [ ! -f "$DEL" ]; then
  cp --sparse=always "$IMG" "$DEL.tmp"
  (cd "$STAGE" && find usr/share/doc usr/include -type f | sort | awk 'NR % 20 == 0 {print "rm /" $0}') |
    debugfs -w -f - "$DEL.tmp" >/dev/null 2>&1
  mv "$DEL.tmp" "$DEL"
fi
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
"$V" timeline "$DEL" | sort > "$T/v.body"
fls -r -m / "$DEL" | sort > "$T/f.body"
echo "timeline: vmscope $(wc -l < "$T/v.body") lines, fls $(wc -l < "$T/f.body"); only vmscope: $(comm -23 "$T/v.body" "$T/f.body" | wc -l), only fls: $(comm -13 "$T/v.body" "$T/f.body" | wc -l)"
echo "  only vmscope, by class: slow symlink target (TSK omits it): $(comm -23 "$T/v.body" "$T/f.body" | grep -c ' -> ' || true)"
echo "  only fls: TSK's virtual \$OrphanFiles directory: $(comm -13 "$T/v.body" "$T/f.body" | grep -c '^0|/\$OrphanFiles|' || true)"
"$V" ls -r --deleted "$DEL" | sed 's/ (deleted\(-realloc\)\?)$//' | sort > "$T/v.del"
fls -r -d -p "$DEL" | sed 's/^[^\t]*\t/\//' | sort > "$T/f.del"
echo "deleted: vmscope $(wc -l < "$T/v.del") names, fls $(wc -l < "$T/f.del"); only vmscope: $(comm -23 "$T/v.del" "$T/f.del" | wc -l), only fls: $(comm -13 "$T/v.del" "$T/f.del" | wc -l)"
# The same work without the process, for profiling (go test -cpuprofile):
#   go test ./timeline/ -run '^$' -bench 'Timeline|ScanDeleted' (timeline/bench_test.go)
load() { echo "load average: $(cut -d' ' -f1-3 /proc/loadavg) ($(nproc) CPUs)"; }
echo "== timeline: vmscope timeline (A) vs fls -r -m / (B)"
load
bench_vs 5 "$V timeline $DEL" "fls -r -m / $DEL"
load
echo "== deleted: vmscope ls -r --deleted (A) vs fls -r -d (B)"
load
bench_vs 5 "$V ls -r --deleted $DEL" "fls -r -d $DEL"
load
