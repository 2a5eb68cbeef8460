"""CPU microbenchmarks: each fastulm op (forward + backward) against its torch reference.

Time: pytest-benchmark's perf_counter timer (triton.testing.do_bench needs a GPU). Peak memory:
``bench_steps.PeakMemory`` (bytes of live tensor storages created during one call), stored in
each result's ``extra_info["peak_mib"]``. Runs whatever path ``FASTULM_KERNELS`` selects
(``auto`` = the memory-lean torch paths on a CPU). Shapes shrink with FASTULM_BENCH_SMALL=1.

    python -m pytest benchmarks/test_kernels_bench.py --benchmark-columns=min,median,rounds
"""

import os

import pytest
import torch
import torch.nn.functional as F
from fastulm.kernels import forget_mult, linear_cross_entropy, masked_concat_pool, weight_drop
from fastulm.kernels.concat_pool import masked_concat_pool_reference
from fastulm.kernels.forget_mult import forget_mult_reference
from fastulm.kernels.linear_ce import linear_cross_entropy_reference
from gpu.bench_steps import MiB, PeakMemory

SMALL = os.environ.get("FASTULM_BENCH_SMALL") == "1"
POOL = (8, 360, 400) if SMALL else (16, 1440, 400)  # classifier encoder output [bs, T, emb]
DROP = (1152 * 4, 1152)  # an AWD-LSTM weight_hh
LCE = (512, 400, 30000) if SMALL else (1680, 400, 60000)  # [bs*bptt, emb] x vocab
QRNN = (16, 72, 1152) if SMALL else (48, 72, 1152)  # a QRNN layer's gates: [bs, bptt, 3 * n_hid]


def run(benchmark, fn):
    """Time ``fn`` (one fwd+bwd per round), then meter one more call's peak memory."""
    benchmark.pedantic(fn, rounds=3, iterations=1, warmup_rounds=1)
    with PeakMemory() as meter:
        fn()
    benchmark.extra_info["peak_mib"] = round(meter.peak / MiB, 1)


def pool_inputs():
    bs, T, H = POOL
    torch.manual_seed(0)
    x = torch.randn(bs, T, H, requires_grad=True)
    mask = torch.zeros(bs, T, dtype=torch.bool)
    for b in range(bs):  # pad_chunk layout: whole bptt chunks first, remainder last
        n = T - (b * 37) % (T // 2)
        front = (T - n) // 72 * 72
        mask[b, :front] = True
        mask[b, front + n :] = True
    return x, mask, torch.randn(bs, 3 * H)


@pytest.mark.benchmark(group="masked_concat_pool")
@pytest.mark.parametrize("impl", ["fastulm", "reference"])
def test_masked_concat_pool(benchmark, impl):
    x, mask, g = pool_inputs()
    pool = masked_concat_pool if impl == "fastulm" else masked_concat_pool_reference

    def fn():
        torch.autograd.grad(pool(x, mask, 72), x, g)

    run(benchmark, fn)


@pytest.mark.benchmark(group="weight_drop")
@pytest.mark.parametrize("impl", ["fastulm", "reference"])
def test_weight_drop(benchmark, impl):
    torch.manual_seed(0)
    w = torch.randn(*DROP, requires_grad=True)
    g = torch.randn(*DROP)

    def fn():
        out = weight_drop(w, 0.5, 1234) if impl == "fastulm" else F.dropout(w, 0.5)
        torch.autograd.grad(out, w, g)

    run(benchmark, fn)


@pytest.mark.benchmark(group="forget_mult")
@pytest.mark.parametrize("impl", ["fastulm", "reference"])
def test_forget_mult(benchmark, impl):
    bs, T, H = QRNN
    torch.manual_seed(0)
    gates = torch.randn(bs, T, 3 * H, requires_grad=True)
    c0, g = torch.zeros(bs, H), torch.randn(bs, T, H)
    fm = forget_mult if impl == "fastulm" else forget_mult_reference

    def fn():
        torch.autograd.grad(fm(gates, c0)[0], gates, g)

    run(benchmark, fn)


@pytest.mark.benchmark(group="linear_cross_entropy")
@pytest.mark.parametrize("impl", ["fastulm", "reference"])
def test_linear_cross_entropy(benchmark, impl):
    N, D, V = LCE
    torch.manual_seed(0)
    x = torch.randn(N, D, requires_grad=True)
    w = (torch.randn(V, D) * 0.05).requires_grad_()
    b = torch.zeros(V, requires_grad=True)
    target = torch.randint(0, V, (N,))
    lce = linear_cross_entropy if impl == "fastulm" else linear_cross_entropy_reference

    def fn():
        loss, _ = lce(x, w, b, target)
        torch.autograd.grad(loss, [x, w, b])

    run(benchmark, fn)
