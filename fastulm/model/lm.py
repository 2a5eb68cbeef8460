"""The language model: the AWD-LSTM encoder and a linear decoder tied to its embedding.

Mixed precision: under ``torch.autocast`` the LSTMs run in the autocast dtype (oneDNN bf16
on CPUs with bf16 support -- fp16 is not available there; cuDNN fp16, and bf16 where the
installed cuDNN supports it). ``LMLoss.loss`` is fp32. ``raw``/``dropped`` stay in the
compute dtype: cast them with ``.float()`` before squaring for AR/TAR, where fastai's
RNNRegularizer casts. The carried hidden state is kept in the parameters' dtype.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from fastulm.kernels import linear_cross_entropy
from fastulm.model.awd_lstm import AWDLSTM
from fastulm.model.config import AWDLSTMConfig, resolve_config
from fastulm.model.dropouts import RNNDropout


@dataclass
class LMOutput:
    logits: torch.Tensor  # [bs, seq, vocab]
    raw: torch.Tensor  # last-layer output before output dropout (TAR)
    dropped: torch.Tensor  # after output dropout (AR)


@dataclass
class LMLoss:
    loss: torch.Tensor  # mean cross-entropy over non-ignored targets, fp32
    n_correct: torch.Tensor  # int64 scalar
    n_tokens: torch.Tensor  # int64 scalar (non-ignored targets)
    raw: torch.Tensor
    dropped: torch.Tensor


class LinearDecoder(nn.Module):
    """Output dropout then a linear layer whose weight is the embedding's (tied)."""

    initrange = 0.1

    def __init__(self, n_out: int, n_hid: int, output_p: float, tie_encoder: nn.Embedding | None):
        super().__init__()
        self.decoder = nn.Linear(n_hid, n_out)
        nn.init.uniform_(self.decoder.weight, -self.initrange, self.initrange)
        nn.init.zeros_(self.decoder.bias)
        self.output_dp = RNNDropout(output_p)
        if tie_encoder is not None:
            self.decoder.weight = tie_encoder.weight


class LanguageModel(nn.Module):
    """Children ``0`` (encoder) and ``1`` (decoder), as the reference's SequentialRNN."""

    def __init__(self, vocab_size: int, config: AWDLSTMConfig):
        super().__init__()
        self.config = config
        self.add_module("0", AWDLSTM(vocab_size, config))
        self.add_module(
            "1", LinearDecoder(vocab_size, config.emb_sz, config.output_p, self.body.encoder)
        )

    @property
    def body(self) -> AWDLSTM:
        return self._modules["0"]

    @property
    def head(self) -> LinearDecoder:
        return self._modules["1"]

    def reset(self) -> None:
        self.body.reset()

    def _hidden(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raw = self.body(x)
        return raw, self.head.output_dp(raw)

    def forward(self, x: torch.Tensor) -> LMOutput:
        """Full logits (inference, generation, parity). Training should use ``loss``."""
        raw, dropped = self._hidden(x)
        return LMOutput(self.head.decoder(dropped), raw, dropped)

    def loss(self, x: torch.Tensor, y: torch.Tensor, ignore_index: int = -100) -> LMLoss:
        """Cross-entropy of the next-token targets ``y`` without materialising the logits."""
        raw, dropped = self._hidden(x)
        dec = self.head.decoder
        target = y.reshape(-1)
        loss, n_correct = linear_cross_entropy(
            dropped.reshape(-1, dropped.size(-1)), dec.weight, dec.bias, target, ignore_index
        )
        return LMLoss(loss, n_correct, (target != ignore_index).sum(), raw, dropped)

    def layer_groups(self) -> list[list[nn.Parameter]]:
        """[rnn0, rnn1, rnn2, embedding+decoder] (tied weight once), as fastai's split."""
        groups = [list(r.parameters()) for r in self.body.rnns]
        groups.append([*self.body.encoder.parameters(), self.head.decoder.bias])
        return groups


def get_language_model(
    vocab_size: int, config: AWDLSTMConfig | None = None, **overrides: Any
) -> LanguageModel:
    """An AWD-LSTM language model; state-dict keys equal fastai's ``get_language_model``.

    ``config`` defaults to ``AWDLSTMConfig.lm()``; keyword overrides replace its fields
    and ``drop_mult=`` scales its dropouts.
    """
    return LanguageModel(vocab_size, resolve_config(config, "lm", overrides))
