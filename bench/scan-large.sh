#!/usr/bin/env bash
# vmscope scan with a large public rule set (thousands of rules) against the
# pipeline users have today, same run, same rules, same jobs:
#   B2 = yara -r -N -p JOBS alone over the already extracted tree (-N: no
#        symlinks followed; vmscope scans regular files only, and an
#        absolute symlink of the tree would lead yara into the host);
#   B1 = the extraction (debugfs rdump of the image, after qemu-img convert
#        -O raw for a qcow2), timed on its own, plus B2: yara over that same
#        tree (B1's peak memory is the larger of the two). One yara run per
#        image instead of one per format: yara with thousands of rules is
#        the slow part, and it does not depend on the image format.
# Images: (a) "usr": the ext4 image of this machine's /usr tree that
# bench/common.sh builds (>= 50,000 files); (b) "debian": a debootstrap'd
# Debian root (from the machine's own apt mirror; cached in bench/.out),
# each as raw, qcow2 and compressed qcow2.
#
# Rules: $VMSCOPE_BENCH_RULES, a directory of .yar/.yara files; else the
# yara/ folder of the git repository $VMSCOPE_BENCH_RULES_GIT (a local git
# directory or a URL to clone; default: the signature-base repository),
# fetched at bench time into bench/.out, never committed. Files that do not
# compile alone (with the external variables defined) are left out, for both.
#
# Timed: wall seconds, cpu seconds (user + system) and peak RSS (GNU time);
# on a shared machine the cpu ratio is the steadier figure.
# TARGETS (default "usr debian"), FORMATS (default "raw qcow2 qcow2c"),
# JOBS (default nproc), RUNS (default 1), PROFILE=1 (a CPU profile of the
# vmscope scan of each raw image, top entries printed).
# Goals (issue 11): A/B1 <= 0.7 and A/B2 <= 1.0 on raw and qcow2; peak
# memory of A <= that of B2.
source "$(dirname "$0")/common.sh"
N=${JOBS:-$(nproc)}
RUNS=${RUNS:-1}
TARGETS=${TARGETS:-usr debian}
FORMATS=${FORMATS:-raw qcow2 qcow2c}
D=(-d filename= -d filepath= -d extension= -d filetype= -d owner= -d md5=)

# ---- the rule set ----
RULES=$OUT/large-rules
if [ ! -f "$RULES/.done" ]; then
  src=${VMSCOPE_BENCH_RULES:-}
  if [ -z "$src" ]; then
    git_src=${VMSCOPE_BENCH_RULES_GIT:-https://github.com/Neo23x0/signature-base}
    rm -rf "$OUT/rules-src"
    mkdir -p "$OUT/rules-src"
    if git --git-dir="$git_src" rev-parse HEAD >/dev/null 2>&1; then
      git --git-dir="$git_src" archive HEAD yara | tar -x -C "$OUT/rules-src"
    elif git -C "$git_src" rev-parse HEAD >/dev/null 2>&1; then
      git -C "$git_src" archive HEAD yara | tar -x -C "$OUT/rules-src"
    else
      git clone -q --depth 1 "$git_src" "$OUT/rules-src/repo"
      mv "$OUT/rules-src/repo/yara" "$OUT/rules-src/yara"
      rm -rf "$OUT/rules-src/repo"
    fi
    src=$OUT/rules-src/yara
  fi
  rm -rf "$RULES"
  mkdir -p "$RULES"
  tmp=$(mktemp)
  find "$src" -type f \( -name '*.yar' -o -name '*.yara' \) | sort | while read -r f; do
    if yarac "${D[@]}" "$f" "$tmp" 2>/dev/null; then
      cp "$f" "$RULES/$(basename "$f")"
    fi
  done
  rm -f "$tmp"
  touch "$RULES/.done"
fi
YRULES=()
for f in "$RULES"/*.yar "$RULES"/*.yara; do
  [ -f "$f" ] && YRULES+=("$(basename "$f"):$f")
done
echo "rules: $RULES: ${#YRULES[@]} files, $(cat "$RULES"/*.yar* | grep -cE '^\s*((private|global)\s+)*rule\s') rules"

# ---- the images ----
# image_for TARGET: sets SRC_IMG (raw ext4) and TREE (the staged tree).
image_for() {
  case $1 in
  usr)
    SRC_IMG=$IMG TREE=$STAGE
    ;;
  debian)
    TREE=$OUT/debian-root SRC_IMG=$OUT/debian.img
    if [ ! -f "$OUT/debian-root.done" ]; then
      command -v debootstrap >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
      # The machine's own Debian mirror and release.
      mirror=$(grep -rhoE '^(URIs:|deb) +[a-z]+://[^ ]+/debian/?( |$)' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null |
        awk '{print $2; exit}')
      suite=$(. /etc/os-release && echo "$VERSION_CODENAME")
      rm -rf "$TREE"
      echo "debootstrap $suite from $mirror (once; cached in $TREE)"
      debootstrap --variant=minbase "$suite" "$TREE" "$mirror" >"$OUT/debootstrap.log" 2>&1
      touch "$OUT/debian-root.done"
      rm -f "$SRC_IMG"
    fi
    [ -f "$SRC_IMG" ] || mkfs.ext4 -q -F -b 4096 -d "$TREE" "$SRC_IMG" 2G
    ;;
  *)
    echo "unknown target $1" >&2
    exit 2
    ;;
  esac
  [ -f "${SRC_IMG%.img}.qcow2" ] || qemu-img convert -O qcow2 "$SRC_IMG" "${SRC_IMG%.img}.qcow2"
  [ -f "${SRC_IMG%.img}-c.qcow2" ] || qemu-img convert -c -O qcow2 "$SRC_IMG" "${SRC_IMG%.img}-c.qcow2"
}

# ---- timing ----
# measure NAME CMDLINE: RUNS runs; sets M_WALL M_CPU M_PEAK to the medians.
measure() {
  local name=$1 cmd=$2 w=() c=() p=() r
  for _ in $(seq "$RUNS"); do
    read -r -a r <<< "$(_run "$cmd")"
    w+=("${r[0]}"); c+=("${r[1]}"); p+=("${r[2]}")
  done
  med() { printf '%s\n' "$@" | sort -g | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}'; }
  M_WALL=$(med "${w[@]}") M_CPU=$(med "${c[@]}") M_PEAK=$(med "${p[@]}")
  printf '  %-30s wall %9.2f s   cpu %9.2f s   peak %8.1f MiB\n' "$name" "$M_WALL" "$M_CPU" "$M_PEAK"
}
ratio() { awk -v x="$1" -v y="$2" 'BEGIN {printf "%.2f", (y > 0 ? x / y : 0)}'; }

YARA="yara ${D[*]} -r -N -p $N ${YRULES[*]}"
for target in $TARGETS; do
  image_for "$target"
  X=$OUT/x-large-$target
  files=$(find "$TREE" -type f | wc -l)
  echo
  echo "== $target: $SRC_IMG ($files regular files, $(du -sh --apparent-size "$TREE" | cut -f1)), jobs $N, $RUNS run(s) each"
  mkdir -p "$X"
  rm -rf "$X/d" && mkdir -p "$X/d" && debugfs -R "rdump / $X/d" "$SRC_IMG" >/dev/null 2>&1
  sync
  # Both inputs start in the page cache (B2 is "an already extracted tree").
  find "$X/d" -type f -exec cat {} + >/dev/null 2>&1 || true
  first=1
  for fmt in $FORMATS; do
    case $fmt in
    raw) im=$SRC_IMG conv="" ;;
    qcow2) im=${SRC_IMG%.img}.qcow2 conv="qemu-img convert -O raw $im $X/raw.img && " ;;
    qcow2c) im=${SRC_IMG%.img}-c.qcow2 conv="qemu-img convert -O raw $im $X/raw.img && " ;;
    esac
    rawsrc=$SRC_IMG
    [ -n "$conv" ] && rawsrc=$X/raw.img
    echo " -- $fmt: $im ($(du -h "$im" | cut -f1) allocated)"
    prof=""
    if [ "${PROFILE:-}" = 1 ] && [ "$fmt" = raw ]; then
      prof="VMSCOPE_CPUPROFILE=$OUT/scan-large-$target.prof "
    fi
    cat "$im" >/dev/null
    measure "A  vmscope scan --jobs $N" "${prof}$V scan --jobs $N --format ndjson --rules $RULES $im >$X/vmscope.ndjson; test \$? -le 1"
    A_WALL=$M_WALL A_CPU=$M_CPU A_PEAK=$M_PEAK
    echo "     vmscope findings: $(grep -c '"type":"finding"' "$X/vmscope.ndjson" || true), errors: $(grep -c '"type":"error"' "$X/vmscope.ndjson" || true)"
    if [ "$first" = 1 ]; then
      # yara alone over the extracted tree: the same for every format.
      measure "B2 yara -r -p $N (tree)" "$YARA $X/d >$X/yara.txt"
      B2_WALL=$M_WALL B2_CPU=$M_CPU B2_PEAK=$M_PEAK
      echo "     yara findings: $(wc -l <"$X/yara.txt")"
      first=0
    fi
    measure "   ${conv:+convert + }rdump" "${conv}rm -rf $X/e && mkdir $X/e && debugfs -R 'rdump / $X/e' $rawsrc 2>/dev/null"
    rm -rf "$X/raw.img" "$X/e"
    B1_WALL=$(awk -v x="$M_WALL" -v y="$B2_WALL" 'BEGIN {print x + y}')
    B1_CPU=$(awk -v x="$M_CPU" -v y="$B2_CPU" 'BEGIN {print x + y}')
    B1_PEAK=$(awk -v x="$M_PEAK" -v y="$B2_PEAK" 'BEGIN {print (x > y ? x : y)}')
    printf '  %-30s wall %9.2f s   cpu %9.2f s   peak %8.1f MiB\n' "B1 = ${conv:+convert + }rdump + B2" "$B1_WALL" "$B1_CPU" "$B1_PEAK"
    printf '  A/B1 wall %s cpu %s (goal <= 0.7)   A/B2 wall %s cpu %s (goal <= 1.0)   peak A/B2 %s (goal <= 1.0)\n' \
      "$(ratio "$A_WALL" "$B1_WALL")" "$(ratio "$A_CPU" "$B1_CPU")" "$(ratio "$A_WALL" "$B2_WALL")" "$(ratio "$A_CPU" "$B2_CPU")" "$(ratio "$A_PEAK" "$B2_PEAK")"
    if [ -n "$prof" ]; then
      go tool pprof -top -nodecount=25 "$V" "$OUT/scan-large-$target.prof" 2>/dev/null | sed -n '1,32p'
    fi
  done
  rm -rf "$X"
done
