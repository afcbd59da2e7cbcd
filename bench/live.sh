#!/usr/bin/env bash
# Live guests: the GDB stub against the QEMU process (qemu:pid=…), on one
# running fixture guest (512 MiB, TCG, KASLR on).
#  1. BenchmarkLiveRead (vmi/qemu): a full read of guest RAM (MiB/s), 10,000
#     random 8-byte reads (µs/read) and attach-to-first-answer (ms), for
#     each path; the ratios process/stub.
#  2. mem ps and mem files --guest end to end on each path (whole process,
#     bench/timing.sh), against mem ps / mem files on a dump of the same
#     guest taken by QEMU (dump-guest-memory) just before.
# Goals (issue 13): bulk >= 2 GiB/s (>= 100x the stub), small reads <= 5 µs,
# mem ps --guest within 1.5x of mem ps on the dump.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/timing.sh
G=${VMSCOPE_GUEST:-testdata/out-guest}
[ -f "$G/vmlinuz" ] || { echo "bench: no guest fixture (run bash testdata/guest/build.sh)" >&2; exit 1; }
V=$PWD/bin/vmscope
go build -o "$V" ./cmd/vmscope
N=${N:-3}

echo "== 1. reads and attach (go test -bench BenchmarkLiveRead ./vmi/qemu)"
out=$(go test ./vmi/qemu -run '^$' -bench '^BenchmarkLiveRead$' -benchtime 1x -timeout 20m)
echo "$out" | grep -E '^Benchmark'
metric() { # NAME UNIT
  echo "$out" | awk -v n="BenchmarkLiveRead/$1" -v u="$2" '$1 ~ "^"n"(-[0-9]+)?$" {for (i = 2; i < NF; i++) if ($(i+1) == u) print $i}'
}
ps_bulk=$(metric process/bulk MiB/s); st_bulk=$(metric stub/bulk MiB/s)
ps_small=$(metric process/small8 µs/read); st_small=$(metric stub/small8 µs/read)
ps_att=$(metric process/attach ms/attach); st_att=$(metric stub/attach ms/attach)
printf '%-28s %12s %12s %10s\n' "" stub process ratio
awk -v a="$st_bulk" -v b="$ps_bulk" 'BEGIN {printf "%-28s %12.1f %12.1f %9.0fx\n", "full read, MiB/s", a, b, b / a}'
awk -v a="$st_small" -v b="$ps_small" 'BEGIN {printf "%-28s %12.2f %12.2f %9.0fx\n", "8-byte read, µs", a, b, a / b}'
awk -v a="$st_att" -v b="$ps_att" 'BEGIN {printf "%-28s %12.1f %12.1f %9.1fx\n", "attach to first answer, ms", a, b, a / b}'

echo "== 2. mem ps / mem files --guest vs a dump of the same guest"
D=$(mktemp -d /tmp/vmscope-live-bench.XXXXXX)
trap 'kill $QPID 2>/dev/null || true; rm -rf "$D"' EXIT
# a free loopback port for the stub: one nothing answers on
while PORT=$((20000 + RANDOM % 20000)); (echo >/dev/tcp/127.0.0.1/$PORT) 2>/dev/null; do :; done
qemu-system-x86_64 -accel tcg -m 512 -smp 1 -nographic -display none -no-reboot \
  -kernel "$G/vmlinuz" -initrd "$G/initrd.gz" -append "console=ttyS0 quiet panic=-1" \
  -serial file:"$D/console.log" -monitor none -net none -gdb tcp:127.0.0.1:$PORT \
  -qmp unix:"$D/qmp.sock",server=on,wait=off -pidfile "$D/qemu.pid" &
QPID=$!
for _ in $(seq 600); do grep -q '=== READY ===' "$D/console.log" 2>/dev/null && break; sleep 0.5; done
grep -q '=== READY ===' "$D/console.log" || { echo "bench: guest not READY" >&2; exit 1; }
STUB="gdb://127.0.0.1:$PORT,qmp=unix:$D/qmp.sock"
PROC="qemu:pidfile=$D/qemu.pid,qmp=unix:$D/qmp.sock"
export XDG_RUNTIME_DIR=$D
"$V" guest dump --guest "$PROC" "$D/now.elf" >/dev/null
"$V" guest info --guest "$PROC" | grep -E 'memory path|stub|read speed'
for verb in ps files; do
  echo "-- mem $verb: process path (A) vs dump (B)"
  bench_vs "$N" "$V mem $verb --guest $PROC" "$V mem $verb $D/now.elf"
  echo "-- mem $verb: stub path (A) vs dump (B)"
  bench_vs "$N" "$V mem $verb --guest $STUB" "$V mem $verb $D/now.elf"
done
