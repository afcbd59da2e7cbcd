#!/usr/bin/env bash
# vmscope mem check against Volatility 3's four Linux check plugins
# (linux.check_syscall, linux.check_modules, linux.hidden_modules,
# linux.check_idt) on the rootkit fixture's dumps (testdata/rootkit: clean,
# sct, ftrace, hide, code; 512 MiB each), and on a 2 GiB dump of the sct
# scenario made here once (bench/.out/rootkit-2g, as bench/mem-2g.sh makes
# its dump): first who finds what per scenario, then the time of each tool on
# the 2 GiB dump (bench/timing.sh: whole process, min/median/max) and the
# ratio.
#
# Volatility is not part of the project and this script neither fetches nor
# builds it nor its symbol file. It takes an installed one:
#   VOL3=/path/to/vol.py        Volatility 3's vol.py, run with $PYTHON (default
#                               /usr/bin/python3, Debian's: its standard library
#                               is all the four plugins need)
#   VOL3_SYMBOLS=DIR            a symbols folder holding the ISF (dwarf2json
#                               linux --elf of Debian's linux-image-KVER-dbg
#                               vmlinux) of exactly the fixture's kernel build
#   VOL3_HIDDEN=/path/to/vol.py optional: a Volatility 3 that has
#                               linux.hidden_modules when VOL3 has not
#   RUNS=N                      timed runs of each command (default 3)
#   PART=table|time             only the table, or only the timing (default both)
# Without VOL3 and VOL3_SYMBOLS it says so and exits 0.
#
# What counts as a finding of each plugin: check_syscall, an entry whose
# handler has no kernel symbol ("UNKNOWN"); check_idt, a gate whose handler
# is outside the kernel ("__kernel__"); check_modules and hidden_modules,
# every row (a module in sysfs, or carved from memory, missing from the list).
set -euo pipefail
cd "$(dirname "$0")/.."
PATH=$PATH:/usr/local/go/bin
PY=${PYTHON:-/usr/bin/python3}
RUNS=${RUNS:-3}
PART=${PART:-both}

skip() {
  echo "cfi-volatility: skipped: $*"
  exit 0
}
[ -n "${VOL3:-}" ] || skip "VOL3 is not set (the path of an installed Volatility 3's vol.py)"
[ -f "$VOL3" ] || skip "VOL3=$VOL3: no such file"
[ -n "${VOL3_SYMBOLS:-}" ] || skip "VOL3_SYMBOLS is not set (a folder with the ISF of the fixture's kernel)"
[ -d "$VOL3_SYMBOLS" ] || skip "VOL3_SYMBOLS=$VOL3_SYMBOLS: no such folder"
command -v "$PY" >/dev/null || skip "$PY not found"
VOLHM=${VOL3_HIDDEN:-$VOL3}
[ -f "$VOLHM" ] || skip "VOL3_HIDDEN=$VOLHM: no such file"
VOL3=$(readlink -f "$VOL3")
VOLHM=$(readlink -f "$VOLHM")
VOL3_SYMBOLS=$(readlink -f "$VOL3_SYMBOLS")

source bench/timing.sh
bash testdata/rootkit/build.sh
RK=testdata/out-rootkit
VMLINUZ=testdata/out-guest/vmlinuz
V=$PWD/bin/vmscope
go build -o "$V" ./cmd/vmscope
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

# The 2 GiB dump: the sct scenario booted with -m 2048.
BIG=bench/.out/rootkit-2g
if [ ! -f "$BIG/guest.elf" ] || [ "$(readlink -f "$RK/initrd.gz")" -nt "$BIG/guest.elf" ]; then
  rm -rf "$BIG"
  mkdir -p "$BIG"
  go run ./vmi/internal/guesttest/guestboot -kernel "$VMLINUZ" -initrd "$RK/initrd.gz" \
    -append vmscope.rootkit=sct -mem 2048 -out "$BIG" -dumps guest.elf:elf >&2
fi

vol() { # vol VOLPY PLUGIN DUMP: the plugin's rows as JSON
  "$PY" "$1" -q -r json -s "$VOL3_SYMBOLS" -f "$3" "$2"
}
plugin_vol() { # the vol.py that has PLUGIN
  if [ "$1" = linux.hidden_modules ]; then echo "$VOLHM"; else echo "$VOL3"; fi
}
PLUGINS=""
for p in linux.check_syscall linux.check_modules linux.hidden_modules linux.check_idt; do
  if "$PY" "$(plugin_vol "$p")" -h 2>/dev/null | grep -q "^ *$p\b"; then
    PLUGINS+="$p "
  else
    echo "cfi-volatility: $(plugin_vol "$p") has no $p (set VOL3_HIDDEN to one that has it): left out" >&2
  fi
done
[ -n "$PLUGINS" ] || skip "$VOL3 has none of the four plugins"
# summary PLUGIN < rows: "N: what" (N findings, as defined above), or the error.
summary() {
  "$PY" -c '
import json, sys
plugin = sys.argv[1]
try:
    rows = json.load(sys.stdin)
except Exception as e:
    print("error: no output (" + type(e).__name__ + ")")
    sys.exit(0)
def flat(rs):
    for r in rs:
        yield r
        yield from flat(r.get("__children", []))
rows = list(flat(rows))
if plugin == "linux.check_syscall":
    hits = ["%s[%d] %#x" % (r["Table Name"], r["Index"], r["Handler Address"]) for r in rows if r["Handler Symbol"] == "UNKNOWN"]
elif plugin == "linux.check_idt":
    hits = ["idt[%#x] %#x %s" % (r["Index"], r["Address"], r["Module"]) for r in rows if r["Module"] != "__kernel__"]
else:
    hits = [("%s %#x" % (r.get("Module Name", r.get("Name")), r.get("Module Address", r.get("Address", 0))) ) for r in rows]
print("%d (of %d rows)%s" % (len(hits), len(rows), (": " + ", ".join(hits)) if hits else ""))
' "$1"
}

if [ "$PART" != time ]; then
  echo "== who finds what (512 MiB dumps of testdata/out-rootkit; vmscope mem check --vmlinuz $VMLINUZ)"
  echo "kernel: $(grep -a -m1 '^Linux version' "$RK/clean/console.log" | tr -d '\r')"
  echo "Volatility: $("$PY" "$VOL3" -h 2>/dev/null | head -1) at $VOL3; hidden_modules from $VOLHM"
  for s in clean sct ftrace hide code; do
    d=$RK/$s/guest.elf
    echo "-- $s: ground truth: $(grep -a -m1 '^mode=' "$RK/$s/console.log" | tr -d '\r' || echo 'nothing (clean)')"
    rc=0
    "$V" mem check --format ndjson --vmlinuz "$VMLINUZ" "$d" > "$TMP/vm.json" || rc=$?
    printf '   %-22s %s\n' "vmscope mem check" "$("$PY" -c '
import json, sys, collections
c = collections.Counter()
w = []
for line in open(sys.argv[1]):
    f = json.loads(line)
    c[f["kind"]] += 1
    w.append("%s %#x" % (f["kind"], f["address"]))
print("%d%s (exit %s)" % (sum(c.values()), (": " + ", ".join(w)) if w else "", sys.argv[2]))
  ' "$TMP/vm.json" "$rc")"
    for p in $PLUGINS; do
      vol "$(plugin_vol "$p")" "$p" "$d" > "$TMP/vol.json" 2> "$TMP/vol.err" || true
      out=$(summary "$p" < "$TMP/vol.json")
      case $out in error:*) out="$out: $(grep -v '^$' "$TMP/vol.err" | tail -1)" ;; esac
      printf '   %-22s %s\n' "$p" "$out"
    done
  done
fi
[ "$PART" != table ] || exit 0
echo
echo "== time on the 2 GiB dump $BIG/guest.elf (sct scenario; $RUNS runs each after a warm-up)"
d=$BIG/guest.elf
echo "-- vmscope mem check --vmlinuz"
bench_one "$RUNS" "$V" mem check --vmlinuz "$VMLINUZ" "$d" | tee "$TMP/t.vmscope"
for p in $PLUGINS; do
  echo "-- $p"
  bench_one "$RUNS" "$PY" "$(plugin_vol "$p")" -q -r json -s "$VOL3_SYMBOLS" -f "$d" "$p" | tee "$TMP/t.$p"
done
echo
for what in wall cpu; do
  med() { awk -v w="$what" '$1 == w {print $4}' "$1"; }
  vm=$(med "$TMP/t.vmscope")
  sum=0
  printf 'median %s s: vmscope mem check %.3f; Volatility 3 ' "$what" "$vm"
  for p in $PLUGINS; do
    printf '%s %.3f, ' "${p#linux.}" "$(med "$TMP/t.$p")"
    sum=$(awk -v a="$sum" -v b="$(med "$TMP/t.$p")" 'BEGIN {print a + b}')
  done
  printf 'sum %.3f\n' "$sum"
  awk -v v="$vm" -v s="$sum" -v w="$what" 'BEGIN {printf "ratio (%s): Volatility 3 four plugins, sum of medians / vmscope mem check = %.1f\n", w, s / v}'
done
