#!/usr/bin/env bash
# The whole IMDB pipeline (scripts/imdb_pipeline.py) in one device call, no network there:
#
#   bash scripts/link_device_data.sh; bash scripts/fetch_gpu_wheels.sh     # here, once
#   run(command="bash scripts/gpu_pipeline.sh", carry=["devdata/aclImdb_v1.tar.gz", "wheelhouse"], timeout_s=600)
#
# The budgeted recipe: --time-budget 9 minutes counted from this script's first line
# (FASTULM_CALL_T0), install included: tokenize, probe the trainer's tokens/s, plan (LM epochs
# in one one-cycle that finishes, then the classifier's gradual unfreezing), train, score all
# 25,000 test reviews. If a stage still runs into the trainer's safety --time-limit it exits 75,
# and the same call on the warm machine resumes from runs/imdb with the saved plan.
# Extra arguments go to imdb_pipeline.py (e.g. --lm-bs 256 --lm-lr 2e-2, --time-budget 8).
# --ratings adds #16's 8-class rating task on the same LM after the 2-class figure; it rarely
# fits the same call, so it exits 75 and the next call on the warm machine (WORK kept)
# resumes it: run(command="bash scripts/gpu_pipeline.sh --ratings --time-budget 4", ...).
# $OUT gets at most 10 files: result.json (the figure, plan, timings), time_to_accuracy.md,
# pipeline.log, tokenize.log, lm.log, clas.log, lm_losses.png, clas_losses.png (with
# --ratings: ratings.log and ratings_confusion.png too). Keep every run, good or bad, here:
#   python scripts/imdb_record.py FILES_AT/result.json FILES_AT/pipeline.log \
#       FILES_AT/lm_losses.png FILES_AT/clas_losses.png
# (benchmarks/results/gpu/imdb-DATE-N.*, and imdb_accuracy_vs_time.png redrawn over all runs)
export FASTULM_CALL_T0=${FASTULM_CALL_T0:-$(date +%s)}
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-}
# fastulm (and any carried wheels) into /tmp/fastulm_site; sets PY, PYTHONPATH, PYTHONSAFEPATH
source scripts/device_env.sh || exit 1
echo "gpu_pipeline.sh: installed in $(($(date +%s) - FASTULM_CALL_T0)) s"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv
WORK=${FASTULM_PIPELINE_WORK:-runs/imdb}
mkdir -p "$WORK"
# the carried archive (scripts/link_device_data.sh), unless FASTULM_DATA says otherwise
[ -z "${FASTULM_DATA:-}" ] && [ -f devdata/aclImdb_v1.tar.gz ] && export FASTULM_DATA=devdata
"$PY" scripts/imdb_pipeline.py --work "$WORK" --time-budget 9 "$@" 2>&1 | tee -a "$WORK/pipeline.log"
rc=${PIPESTATUS[0]}
if [ -n "$OUT" ]; then
  for f in "$WORK"/result.json "$WORK"/time_to_accuracy.md "$WORK"/pipeline.log \
    "$WORK"/tokenize.log "$WORK"/lm.log "$WORK"/clas.log "$WORK"/lm/losses.png \
    "$WORK"/clas/losses.png "$WORK"/ratings.log "$WORK"/ratings/confusion.png; do
    [ -f "$f" ] && cp "$f" "$OUT/$(echo "${f#"$WORK"/}" | tr / _)"
  done
fi
echo "gpu_pipeline.sh: rc $rc after $(($(date +%s) - FASTULM_CALL_T0)) s"
exit "$rc"
