"""BatchNorm over the global batch when several processes train one model together.

Under data parallelism each process sees ``bs / world_size`` rows; plain BatchNorm would
normalise with each slice's own statistics, so a DDP run no longer computes what one process
with the whole batch computes. ``torch.nn.SyncBatchNorm`` fixes that on GPUs only; this one
works on any backend (gloo on CPUs included) by summing the statistics with an ``all_reduce``
that has a backward, so gradients flow through the shared mean and variance exactly as they do
through a single process's.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


class _SumOverRanks(torch.autograd.Function):
    """``all_reduce(SUM)`` with its gradient: every rank's result depends on every rank's
    input, so the incoming gradients are summed over the ranks the same way."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        out = x.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        out = grad.clone()
        dist.all_reduce(out)
        return out


def _world_size() -> int:
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size()


class GlobalBatchNorm1d(nn.BatchNorm1d):
    """``nn.BatchNorm1d`` (same parameters, buffers and state-dict keys) whose training
    statistics cover every process's rows; outside a process group it is the plain layer."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or _world_size() == 1:
            return super().forward(x)
        all_reduce = _SumOverRanks.apply
        xf = x.float()
        n = all_reduce(torch.tensor(float(x.shape[0]), device=x.device))
        mean = all_reduce(xf.sum(0)) / n  # two passes, as the single-process kernel is exact
        centred = xf - mean
        var = all_reduce((centred * centred).sum(0)) / n
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum
                if m is None:  # cumulative average, as nn.BatchNorm1d
                    m = 1.0 / float(self.num_batches_tracked)
                unbiased = var * (n / (n - 1)) if n > 1 else var
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), m)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), m)
        y = centred * torch.rsqrt(var + self.eps)
        if self.affine:
            y = y * self.weight + self.bias
        return y.to(x.dtype)
