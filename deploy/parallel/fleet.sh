#!/usr/bin/env bash
# A fleet poll on one machine with GNU parallel: N shard processes at once,
# then the report. Usage: fleet.sh INVENTORY STATE_DIR OUT_DIR [N] [RUN_ID]
# ($VMSCOPE: the vmscope binary, default vmscope on PATH; more scan flags in
# $VMSCOPE_FLAGS). Exit status: the report's (0 clean, 1 findings, 2 images
# failed or missing).
set -euo pipefail
inv=$1 state=$2 out=$3 n=${4:-$(nproc)} run=${5:-$(date -u +%Y%m%dT%H%M)}
vmscope=${VMSCOPE:-vmscope}
# --findings-exit-code 0: a shard's findings are not a failed job; --halt
# never: one shard's failure does not stop the others; the report says.
# shellcheck disable=SC2086
parallel --will-cite --jobs "$n" --halt never --line-buffer \
  "$vmscope" fleet scan "$inv" --shard {}/"$n" --state-dir "$state" --out "$out" \
  --run-id "$run" --findings-exit-code 0 ${VMSCOPE_FLAGS:-} ::: $(seq 0 $((n - 1))) || true
exec "$vmscope" fleet report --out "$out/$run" --inventory "$inv" --format "${VMSCOPE_REPORT_FORMAT:-table}"
