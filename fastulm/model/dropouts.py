"""The AWD-LSTM dropouts: locked (one mask per sequence), whole-word embedding dropout and
DropConnect on a recurrent layer's weights."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fastulm.kernels import weight_drop


def drop_connect(raw: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """``raw`` with entries dropped once per forward (training only). The seed comes from
    torch's default generator, so activation checkpointing (which restores it) replays the
    same mask."""
    if not training or p == 0.0:
        return raw
    seed = int(torch.randint(2**31 - 1, (1,)).item())
    return weight_drop(raw, p, seed)


def dropout_mask(x: torch.Tensor, shape: tuple[int, ...], p: float) -> torch.Tensor:
    """A multiplicative mask of ``x``'s dtype/device: 0 with probability p, else 1/(1-p)."""
    return x.new_empty(shape).bernoulli_(1 - p).div_(1 - p)


class RNNDropout(nn.Module):
    """Locked dropout: one mask per sequence and feature, shared over every time step."""

    def __init__(self, p: float = 0.5):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        return x * dropout_mask(x, (x.size(0), 1, *x.shape[2:]), self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class EmbeddingDropout(nn.Module):
    """Drops whole words: every occurrence of a dropped token id embeds to zero.

    Equal to the reference's ``(weight * mask[V,1])`` lookup, but the mask is applied to
    the looked-up rows, so no masked copy of the [V, D] matrix is made per call.
    """

    def __init__(self, emb: nn.Embedding, embed_p: float):
        super().__init__()
        self.emb = emb
        self.embed_p = embed_p

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        w = self.emb.weight
        out = F.embedding(ids, w, self.emb.padding_idx)
        if not self.training or self.embed_p == 0.0:
            return out
        mask = dropout_mask(w, (w.size(0),), self.embed_p)
        return out * mask[ids].unsqueeze(-1)

    def extra_repr(self) -> str:
        return f"embed_p={self.embed_p}"
