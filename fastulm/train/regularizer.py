"""AR and TAR, the AWD-LSTM's activation regularizers (Merity et al., 2017).

AR penalises large activations of the last layer after output dropout, TAR penalises large
changes between consecutive time steps of the raw last-layer output. Both are computed in fp32
(fastai PR #1374: under fp16 the squares overflow) and only while training.
"""

from __future__ import annotations

import torch


def ar_tar(raw: torch.Tensor, dropped: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    """``alpha * mean(dropped**2) + beta * mean((raw[:, t+1] - raw[:, t])**2)``; [bs, T, H] inputs."""
    loss = raw.new_zeros((), dtype=torch.float32)
    if alpha:
        loss = loss + alpha * dropped.float().pow(2).mean()
    if beta and raw.shape[1] > 1:
        raw = raw.float()  # difference in fp32 too (fastai subtracts in half precision)
        loss = loss + beta * (raw[:, 1:] - raw[:, :-1]).pow(2).mean()
    return loss
