# Timing helpers for the bench scripts. This workplace's farm-bench gives the
# best figures (A/B in turn, medians, peak memory); elsewhere a plain
# alternating loop with bash's time gives medians and the median ratio.

# bench_one N CMD...: time one command.
bench_one() {
  local n=$1; shift
  if command -v farm-bench >/dev/null; then
    farm-bench -n "$n" --timeout 900 -- "$@"
    return
  fi
  local ts=()
  for _ in $(seq "$n"); do ts+=("$(_bench_secs "$(printf '%q ' "$@")")"); done
  echo "wall s median $(_median "${ts[@]}") (runs: ${ts[*]})"
}

# bench_vs N 'A' 'B': A against B (shell command lines), in turn.
bench_vs() {
  local n=$1 a=$2 b=$3
  if command -v farm-bench >/dev/null; then
    farm-bench -n "$n" --timeout 900 --vs "sh -c '${b//\'/\'\\\'\'}'" -- sh -c "$a"
    return
  fi
  local ta=() tb=() rs=()
  for _ in $(seq "$n"); do
    local x y
    x=$(_bench_secs "$a"); y=$(_bench_secs "$b")
    ta+=("$x"); tb+=("$y"); rs+=("$(awk -v x="$x" -v y="$y" 'BEGIN{printf "%.4f", x/y}')")
  done
  echo "A wall s median $(_median "${ta[@]}")   B wall s median $(_median "${tb[@]}")   A/B wall median $(_median "${rs[@]}")"
}

_bench_secs() {
  local TIMEFORMAT=%R
  { time sh -c "$1" >/dev/null 2>&1; } 2>&1 | tail -1
}

_median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'; }
