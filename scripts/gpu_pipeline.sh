#!/usr/bin/env bash
# The whole IMDB pipeline (scripts/imdb_pipeline.py) on a lent GPU machine, no network there:
#
#   bash scripts/link_device_data.sh       # here, once: ./devdata -> the data folder
#   run(command="bash scripts/gpu_pipeline.sh", carry=["devdata/aclImdb_v1.tar.gz", "wheelhouse"], timeout_s=600)
#
# Each call works for at most --time-budget minutes (8.5 here, leaving the install and the last
# checkpoint inside a 600 s device call) and exits 75 when it stopped
# with a checkpoint: call it again, on the same warm machine, and it resumes from runs/imdb.
# Extra arguments go to imdb_pipeline.py (e.g. --record benchmarks/RESULTS.md, --lm-args ...).
# The work folder's reports and logs are copied to $OUT (the device tool's output folder).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-}
# fastulm (and any carried wheels) into /tmp/fastulm_site; sets PY, PYTHONPATH, PYTHONSAFEPATH
source scripts/device_env.sh || exit 1
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv
WORK=${FASTULM_PIPELINE_WORK:-runs/imdb}
# the carried archive (scripts/link_device_data.sh), unless FASTULM_DATA says otherwise
[ -z "${FASTULM_DATA:-}" ] && [ -f devdata/aclImdb_v1.tar.gz ] && export FASTULM_DATA=devdata
"$PY" scripts/imdb_pipeline.py --work "$WORK" --time-budget 8.5 "$@"
rc=$?
if [ -n "$OUT" ]; then
  for f in "$WORK"/*.md "$WORK"/*.json "$WORK"/*.log "$WORK"/lm/log.csv "$WORK"/clas/log.csv \
    "$WORK"/lm/losses.png "$WORK"/clas/losses.png; do
    [ -f "$f" ] && cp "$f" "$OUT/$(echo "${f#"$WORK"/}" | tr / _)"
  done
fi
exit "$rc"
