"""How long a run will take on a CPU, said before it starts.

The paper-size recipe is days of work on a laptop's cores; a user who forgot ``--preset``
should hear that before the first epoch, not after. The estimate is plain arithmetic: a
training step costs about 6 FLOPs per parameter per token (forward 2, backward 4; the tied
decoder counts, the embedding lookup does not), at the rate a float32 matmul runs here. An
LSTM reaches less of that rate than a matmul, so the estimate errs on the short side.
"""

from __future__ import annotations

import time

import torch


def matmul_flops(n: int = 512, repeats: int = 5) -> float:
    """float32 FLOP/s of an n x n matmul on this machine's CPU (median of ``repeats``)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / max(sorted(times)[repeats // 2], 1e-9)


def flops_per_token(model: torch.nn.Module, kind: str) -> float:
    params = sum(p.numel() for p in model.parameters())
    if kind == "clas":  # no decoder: the embedding is only looked up
        params -= model.body.encoder.weight.numel()
    return 6.0 * params


def training_seconds(model: torch.nn.Module, kind: str, tokens: int, flops: float) -> float:
    return flops_per_token(model, kind) * tokens / flops


def describe(seconds: float) -> str:
    if seconds >= 2 * 86400:
        return f"about {seconds / 86400:.0f} days"
    if seconds >= 2 * 3600:
        return f"about {seconds / 3600:.0f} hours"
    return f"about {max(seconds / 60, 1):.0f} minutes"
