# Timing helpers for the bench scripts. A command is timed as a whole process
# (start-up included): wall seconds from the shell's nanosecond clock around
# it, cpu seconds (user + system) and peak resident memory from GNU time
# (/usr/bin/time, Debian package "time"). Each command runs once to warm the
# page cache, then N times; bench_vs runs A and B in turn (A B A B ...) and
# takes the ratio pair by pair, so a drift of the machine's speed during the
# call does not bias it. Every figure is printed as min, median and max:
# quote the median.
if [ ! -x /usr/bin/time ]; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq time >/dev/null
fi

# _run CMDLINE: runs it under sh -c, output discarded; prints
# "wall_s cpu_s peak_MiB".
_run() {
  local f s e
  f=$(mktemp)
  s=$(date +%s%N)
  /usr/bin/time -f '%U %S %M' -o "$f" sh -c "$1" >/dev/null 2>&1 || true
  e=$(date +%s%N)
  awk -v w=$(((e - s) / 1000)) 'END {printf "%.6f %.3f %.1f\n", w / 1e6, $1 + $2, $3 / 1024}' "$f"
  rm -f "$f"
}

# _row NAME VALUES...: "NAME min median max".
_row() {
  local name=$1
  shift
  printf '%s\n' "$@" | sort -g | awk -v n="$name" '{a[NR] = $1}
    END {printf "%-12s %10.4f %10.4f %10.4f\n", n, a[1], a[int((NR + 1) / 2)], a[NR]}'
}

# bench_one N CMD...: time one command.
bench_one() {
  local n=$1 cmd w=() c=() p=() r
  shift
  cmd=$(printf '%q ' "$@")
  _run "$cmd" >/dev/null
  for _ in $(seq "$n"); do
    read -r -a r <<< "$(_run "$cmd")"
    w+=("${r[0]}"); c+=("${r[1]}"); p+=("${r[2]}")
  done
  printf '%-12s %10s %10s %10s   (%d runs)\n' "" min median max "$n"
  _row "wall s" "${w[@]}"
  _row "cpu s" "${c[@]}"
  _row "peak MiB" "${p[@]}"
}

# bench_vs N 'A' 'B': A against B (shell command lines), in turn. PREP_A
# and PREP_B, when set, are command lines run before each run of A and B,
# untimed (restoring the state a run changes).
bench_vs() {
  local n=$1 a=$2 b=$3 ra rb aw=() ac=() ap=() bw=() bc=() bp=() rw=() rc=()
  local pa=${PREP_A:-true} pb=${PREP_B:-true}
  sh -c "$pa"; _run "$a" >/dev/null
  sh -c "$pb"; _run "$b" >/dev/null
  for _ in $(seq "$n"); do
    sh -c "$pa"; read -r -a ra <<< "$(_run "$a")"
    sh -c "$pb"; read -r -a rb <<< "$(_run "$b")"
    aw+=("${ra[0]}"); ac+=("${ra[1]}"); ap+=("${ra[2]}")
    bw+=("${rb[0]}"); bc+=("${rb[1]}"); bp+=("${rb[2]}")
    rw+=("$(awk -v x="${ra[0]}" -v y="${rb[0]}" 'BEGIN {printf "%.4f", x / y}')")
    rc+=("$(awk -v x="${ra[1]}" -v y="${rb[1]}" 'BEGIN {printf "%.4f", (y > 0 ? x / y : 0)}')")
  done
  echo "A = $a${PREP_A:+   (after, untimed: $PREP_A)}"
  echo "B = $b${PREP_B:+   (after, untimed: $PREP_B)}"
  printf '%-12s %10s %10s %10s   (%d runs each, in turn)\n' "" min median max "$n"
  _row "A wall s" "${aw[@]}"
  _row "A cpu s" "${ac[@]}"
  _row "A peak MiB" "${ap[@]}"
  _row "B wall s" "${bw[@]}"
  _row "B cpu s" "${bc[@]}"
  _row "B peak MiB" "${bp[@]}"
  _row "A/B wall" "${rw[@]}"
  _row "A/B cpu" "${rc[@]}"
}
