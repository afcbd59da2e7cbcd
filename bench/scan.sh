#!/usr/bin/env bash
# vmscope scan against the pipeline users have today (debugfs rdump, then
# yara -r -p N over the extracted tree) and against yara -r -p N alone over an
# already extracted tree, same rules (vmscope's embedded set), same run.
source "$(dirname "$0")/common.sh"
N=${JOBS:-$(nproc)}
RULES=$OUT/rules.yar
cat scan/rules/*.yar > "$RULES"
D="-d filename= -d filepath= -d extension= -d filetype= -d owner= -d md5="
X=$OUT/x; mkdir -p "$X"
echo "== vmscope scan (A) vs debugfs rdump + yara -r -p $N (B)"
bench_vs 3 "$V scan --jobs $N --format ndjson $IMG >/dev/null; test \$? -le 1" \
  "rm -rf $X/d && mkdir $X/d && debugfs -R 'rdump / $X/d' $IMG 2>/dev/null && yara $D -r -p $N $RULES $X/d >/dev/null"
echo "== vmscope scan (A) vs yara -r -p $N on the extracted tree (B)"
bench_vs 3 "$V scan --jobs $N --format ndjson $IMG >/dev/null; test \$? -le 1" \
  "yara $D -r -p $N $RULES $STAGE >/dev/null"
rm -rf "$X"
