#!/usr/bin/env bash
# The GPU suite in one command, for a lent GPU machine (no network there):
#
#   bash scripts/fetch_gpu_wheels.sh                     # here, once: fastai + deps -> ./wheelhouse
#   run(command="bash benchmarks/gpu/run.sh", carry=["wheelhouse"], timeout_s=600)
#
# Installs the carried wheels and fastulm itself into /tmp/fastulm_site (--no-index, through
# scripts/device_env.sh), then runs
# benchmarks/gpu/suite.py (the CUDA tests, bf16 cuDNN LSTM check, do_bench kernel
# microbenchmarks, steps at bs 48, largest batch under an 8 GiB cap; ~9 minutes budget).
# Results land in $OUT (the device tool's output folder; else benchmarks/results):
# gpu_results.json, gpu_results.md (a markdown fragment), gpu_suite.log, nvidia_smi.txt.
# Extra arguments go to suite.py (e.g. --budget 300, --skip-tests, --cpu for a CPU dry run).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
# carried wheels + fastulm into /tmp/fastulm_site; sets PY, PYTHONPATH, PYTHONSAFEPATH
source scripts/device_env.sh || exit 1

command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version \
  --format=csv | tee "$OUT/nvidia_smi.txt"
"$PY" benchmarks/gpu/suite.py --out "$OUT" "$@" 2>&1 | tee "$OUT/gpu_suite.log"
exit "${PIPESTATUS[0]}"
