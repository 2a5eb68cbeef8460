#!/usr/bin/env bash
# The GPU suite in one device call. THE PREPARED CALL for a lent session (details and what to
# commit: benchmarks/gpu/README.md):
#
#   here, once:  bash scripts/fetch_gpu_wheels.sh        # fastai 2.8.12 + deps -> ./wheelhouse (2.5 MB)
#   then:        run(command="bash benchmarks/gpu/run.sh", carry=["wheelhouse"], timeout_s=570)
#
# Order: install (carried wheels + fastulm into /tmp/fastulm_site, --no-index), env.txt
# (nvidia-smi, versions), then benchmarks/gpu/suite.py's stages: env, bf16 cuDNN LSTM check
# (decides the precision), CUDA tests (kernels, model, train; streamed into tests.log), steps,
# LM throughput sweep, 8 GiB cap search, do_bench. 480 s of stages; suite.py ends itself at
# 500 s whatever hangs, and `timeout` below at 510 s. Everything measured is on disk in $OUT
# as it happens: a time-out loses nothing already measured.
#
# $OUT gets 5 files (a device call returns 8 at most): suite-YYYY-MM-DD.json (with "claims"),
# suite.md, tests.log, suite.log (everything printed), env.txt.
# Extra arguments go to suite.py (--budget SECONDS, --skip tests,kernels, --precision fp16,
# --cpu for the CPU rehearsal: OUT=/tmp/x bash benchmarks/gpu/run.sh --cpu).
set -uo pipefail
cd "$(dirname "$0")/../.."
T0=$(date +%s)
if [ -z "${OUT:-}" ]; then
  echo "run.sh: set OUT (the device tool sets it; here e.g. OUT=/tmp/gpu_out)" >&2
  exit 2
fi
mkdir -p "$OUT"
exec > >(tee -a "$OUT/suite.log") 2>&1
echo "run.sh: start $(date -u +%FT%TZ)"
# carried wheels + fastulm into /tmp/fastulm_site; sets PY, PYTHONPATH, PYTHONSAFEPATH
source scripts/device_env.sh || exit 1
echo "run.sh: installed in $(($(date +%s) - T0)) s"
{
  date -u +%FT%TZ
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem,temperature.gpu,power.draw --format=csv
  command -v nvidia-smi >/dev/null && nvidia-smi
  "$PY" -m pip list 2>/dev/null | grep -iE '^(torch|triton|numpy|fastai|fastcore|fastprogress|pytest|nvidia-cudnn)' || true
} > "$OUT/env.txt" 2>&1
head -3 "$OUT/env.txt"
HARD=${SUITE_HARD_LIMIT:-510}
timeout -k 5 "$HARD" "$PY" benchmarks/gpu/suite.py --out "$OUT" "$@"
rc=$?
[ "$rc" -eq 124 ] && echo "run.sh: suite.py stopped by timeout after ${HARD} s; the JSON holds what was measured"
n=$(find "$OUT" -type f | wc -l)
echo "run.sh: rc $rc, $n files in \$OUT, $(($(date +%s) - T0)) s in all"
ls -la "$OUT"
[ "$n" -le 8 ] || echo "run.sh: WARNING: $n files in \$OUT; only 8 come back"
exit "$rc"
