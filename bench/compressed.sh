#!/usr/bin/env bash
# vmscope scan of a compressed qcow2 (as cloud images ship) against the scan
# of the same disk as raw, same rules, same run, with the cost of inflating
# the whole image (qemu-img convert -O raw of the compressed file) measured
# beside them (into a file, as a user would inflate it; removed untimed). Goal (issue 11): compressed scan <= (raw scan + inflation /
# jobs) * 1.15, since every compressed cluster is to be inflated once and
# the inflation spread over the workers.
source "$(dirname "$0")/common.sh"
N=${JOBS:-$(nproc)}
RUNS=${RUNS:-3}
for c in zlib zstd; do
  Q=$OUT/usr-$c.qcow2
  if [ ! -f "$Q" ] || [ "$Q" -ot "$IMG" ]; then
    qemu-img convert -c -O qcow2 -o compression_type=$c "$IMG" "$Q"
  fi
done
RAWOUT=$OUT/inflated.raw
SCAN="$V scan --jobs $N --format ndjson"   # the embedded rules, as bench/scan.sh
for c in zlib zstd; do
  Q=$OUT/usr-$c.qcow2
  echo "== vmscope scan of $IMG as raw (R), as $c-compressed qcow2 (C, $(du -h "$Q" | cut -f1)), and qemu-img convert -O raw of C (I); $N jobs"
  # Warm the page cache for all three, then R C I in turn, RUNS times.
  _run "$SCAN $IMG >/dev/null" >/dev/null
  _run "$SCAN $Q >/dev/null" >/dev/null
  _run "qemu-img convert -O raw $Q $RAWOUT" >/dev/null; rm -f "$RAWOUT"
  rw=(); cw=(); iw=(); rc=(); cc=(); ic=(); rp=(); cp=(); ratio=(); cratio=()
  for _ in $(seq "$RUNS"); do
    read -r -a r <<< "$(_run "$SCAN $IMG >/dev/null; test \$? -le 1")"
    read -r -a q <<< "$(_run "$SCAN $Q >/dev/null; test \$? -le 1")"
    read -r -a i <<< "$(_run "qemu-img convert -O raw $Q $RAWOUT")"
    rm -f "$RAWOUT"
    rw+=("${r[0]}"); rc+=("${r[1]}"); rp+=("${r[2]}")
    cw+=("${q[0]}"); cc+=("${q[1]}"); cp+=("${q[2]}")
    iw+=("${i[0]}"); ic+=("${i[1]}")
    cratio+=("$(awk -v r="${r[1]}" -v c="${q[1]}" -v i="${i[1]}" 'BEGIN {printf "%.4f", c / (r + i)}')")
    ratio+=("$(awk -v r="${r[0]}" -v c="${q[0]}" -v i="${i[0]}" -v n="$N" 'BEGIN {printf "%.4f", c / (r + i / n)}')")
  done
  printf '%-12s %10s %10s %10s   (%d runs each, in turn)\n' "" min median max "$RUNS"
  _row "R wall s" "${rw[@]}"
  _row "R cpu s" "${rc[@]}"
  _row "R peak MiB" "${rp[@]}"
  _row "C wall s" "${cw[@]}"
  _row "C cpu s" "${cc[@]}"
  _row "C peak MiB" "${cp[@]}"
  _row "I wall s" "${iw[@]}"
  _row "I cpu s" "${ic[@]}"
  _row "C/(R+I/$N) wall" "${ratio[@]}"
  _row "C/(R+I) cpu" "${cratio[@]}"
  med() { printf '%s\n' "$@" | sort -g | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}'; }
  awk -v m="$(med "${ratio[@]}")" -v c="$(med "${cratio[@]}")" 'BEGIN {
    printf "goal: compressed scan <= (raw scan + inflation / jobs) * 1.15: median wall ratio %.3f (%s)\n", m, (m <= 1.15 ? "met" : "MISSED")
    printf "      the same in cpu time (inflation counted whole): median cpu ratio %.3f (%s)\n", c, (c <= 1.15 ? "met" : "MISSED") }'
done
