"""Step time and peak memory: fastulm (each memory-saving piece on/off) vs the reference.

One forward + backward of the LM (bs 48, bptt 70, vocab 60k) and of the fully unfrozen
classifier (bs 48, IMDB-length documents: 1440 tokens, the reference's max_len), on the same
random inputs in the same run. CUDA when present (peak = torch.cuda.max_memory_allocated), else
the CPU (peak = bench_steps.PeakMemory, live tensor storages). The metered step is also the
warm-up. Each result's ``extra_info["peak_mib"]``, a JSON line per result (appended to
$FASTULM_BENCH_LOG when set), and the last test prints the table with ratios to the reference.

The full sizes take minutes per step on a 2-core CPU: scale down with FASTULM_BENCH_SMALL=1
(LM bs 8, classifier bs 4 x 432 tokens) or FASTULM_BENCH_{BS,CLAS_BS,BPTT,VOCAB,CLAS_SEQ}.

    FASTULM_BENCH_SMALL=1 python -m pytest benchmarks/test_memory_bench.py -s \
        --benchmark-columns=median,rounds
"""

import json
import os

import pytest
import torch
from gpu.bench_steps import (
    fastai_clas_step,
    fastai_lm_step,
    fastulm_clas_step,
    fastulm_lm_step,
    peak_mib,
)

from conftest import need_fastai

SMALL = os.environ.get("FASTULM_BENCH_SMALL") == "1"
BS = int(os.environ.get("FASTULM_BENCH_BS", 8 if SMALL else 48))
CLAS_BS = int(os.environ.get("FASTULM_BENCH_CLAS_BS", 4 if SMALL else BS))
BPTT = int(os.environ.get("FASTULM_BENCH_BPTT", 70))
VOCAB = int(os.environ.get("FASTULM_BENCH_VOCAB", 60000))
CLAS_SEQ = int(os.environ.get("FASTULM_BENCH_CLAS_SEQ", 432 if SMALL else 1440))
ROUNDS = int(os.environ.get("FASTULM_BENCH_ROUNDS", 1 if SMALL else 3))
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
# bf16 autocast needs bf16 support (CPUs without avx512_bf16/amx emulate it slowly)
BF16 = torch.bfloat16

LM_VARIANTS = {
    "reference": lambda: fastai_lm_step(VOCAB, BS, BPTT, DEVICE),
    "fastulm": lambda: fastulm_lm_step(VOCAB, BS, BPTT, DEVICE),
    "fastulm, unfused CE": lambda: fastulm_lm_step(VOCAB, BS, BPTT, DEVICE, fused_ce=False),
    "fastulm, checkpoint": lambda: fastulm_lm_step(VOCAB, BS, BPTT, DEVICE, checkpoint=True),
    "fastulm, bf16": lambda: fastulm_lm_step(VOCAB, BS, BPTT, DEVICE, amp=BF16),
    "fastulm, checkpoint + bf16": lambda: fastulm_lm_step(
        VOCAB, BS, BPTT, DEVICE, checkpoint=True, amp=BF16
    ),
}
CLAS_VARIANTS = {
    "reference": lambda: fastai_clas_step(VOCAB, CLAS_BS, CLAS_SEQ, DEVICE),
    "fastulm": lambda: fastulm_clas_step(VOCAB, CLAS_BS, CLAS_SEQ, DEVICE),
    "fastulm, reference pool": lambda: fastulm_clas_step(
        VOCAB, CLAS_BS, CLAS_SEQ, DEVICE, fused_pool=False
    ),
    "fastulm, checkpoint": lambda: fastulm_clas_step(
        VOCAB, CLAS_BS, CLAS_SEQ, DEVICE, checkpoint=True
    ),
    "fastulm, bf16": lambda: fastulm_clas_step(VOCAB, CLAS_BS, CLAS_SEQ, DEVICE, amp=BF16),
    "fastulm, checkpoint + bf16": lambda: fastulm_clas_step(
        VOCAB, CLAS_BS, CLAS_SEQ, DEVICE, checkpoint=True, amp=BF16
    ),
}
RESULTS: dict[tuple[str, str], tuple[float, float]] = {}


def run(benchmark, kind, variant, build):
    if variant.startswith("reference"):
        need_fastai()
    step = build()
    peak = peak_mib(step, DEVICE)  # doubles as the warm-up round
    benchmark.pedantic(step, rounds=ROUNDS, iterations=1, warmup_rounds=0)
    median = benchmark.stats.stats.median
    benchmark.extra_info.update(peak_mib=round(peak, 1), device=DEVICE.type)
    RESULTS[(kind, variant)] = (median, peak)
    line = dict(step=kind, variant=variant, median_s=round(median, 3), peak_mib=round(peak, 1))
    line.update(device=DEVICE.type, bs=BS if kind == "lm" else CLAS_BS, bptt=BPTT, vocab=VOCAB)
    line.update(clas_seq=CLAS_SEQ)
    print("\n" + json.dumps(line), flush=True)
    if os.environ.get("FASTULM_BENCH_LOG"):  # results survive a run cut short
        with open(os.environ["FASTULM_BENCH_LOG"], "a") as f:
            f.write(json.dumps(line) + "\n")


@pytest.mark.slow
@pytest.mark.benchmark(group="lm step")
@pytest.mark.parametrize("variant", list(LM_VARIANTS))
def test_lm_step(benchmark, variant):
    run(benchmark, "lm", variant, LM_VARIANTS[variant])


@pytest.mark.slow
@pytest.mark.benchmark(group="classifier step")
@pytest.mark.parametrize("variant", list(CLAS_VARIANTS))
def test_classifier_step(benchmark, variant):
    run(benchmark, "classifier", variant, CLAS_VARIANTS[variant])


def test_zz_summary():
    """Print the markdown table (time and peak ratios to the reference of the same step)."""
    if not RESULTS:
        pytest.skip("no step ran")
    print(
        f"\n\nDevice {DEVICE.type}; LM bs {BS} x bptt {BPTT}, vocab {VOCAB}; classifier bs "
        f"{CLAS_BS} x {CLAS_SEQ} tokens.\n\n"
        "| step | variant | median s | x ref | peak MiB | x ref |\n|---|---|---|---|---|---|"
    )
    for (kind, variant), (sec, peak) in RESULTS.items():
        ref = RESULTS.get((kind, "reference"))
        t_ratio = f"{sec / ref[0]:.2f}" if ref else "-"
        m_ratio = f"{peak / ref[1]:.2f}" if ref else "-"
        print(f"| {kind} | {variant} | {sec:.2f} | {t_ratio} | {peak:.0f} | {m_ratio} |")
