"""The AWD-LSTM encoder: embedding, locked dropouts and weight-dropped one-layer LSTMs
(or QRNN layers, ``config.arch == "qrnn"``, see qrnn.py).

Parameter names follow the reference (fastai 2.8.12 ``AWD_LSTM``) so state dicts load both
ways: ``encoder.weight``, ``encoder_dp.emb.weight`` (the same tensor),
``rnns.{i}.weight_hh_l0_raw`` and ``rnns.{i}.module.{weight_ih_l0,bias_ih_l0,bias_hh_l0}``.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import nn

from fastulm.model.config import AWDLSTMConfig
from fastulm.model.dropouts import EmbeddingDropout, RNNDropout, drop_connect
from fastulm.model.qrnn import WeightDropQRNN
from fastulm.model.recompute import recompute

# per layer a pair of [1, bs, *] tensors: (h, c) for an LSTM, (c, previous input) for a QRNN
State = list[tuple[torch.Tensor, torch.Tensor]]


class LSTMWeights(nn.Module):
    """One LSTM layer's input weights and biases, under nn.LSTM's parameter names."""

    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.weight_ih_l0 = nn.Parameter(torch.empty(4 * n_out, n_in))
        self.bias_ih_l0 = nn.Parameter(torch.empty(4 * n_out))
        self.bias_hh_l0 = nn.Parameter(torch.empty(4 * n_out))


def _cudnn_flat(weights: list[torch.Tensor]) -> list[torch.Tensor]:
    """Views of one contiguous buffer holding [w_ih, w_hh, b_ih, b_hh] in cuDNN's order.

    cuDNN wants a layer's weights in a single buffer; handing it separate tensors makes it
    compact them itself on every call (with a warning). Concatenating here costs the same
    one copy, keeps autograd exact (gradients flow back through the views) and needs no
    ``flatten_parameters`` patch or warning filter.
    """
    flat = torch.cat([w.reshape(-1) for w in weights])
    return [v.view_as(w) for v, w in zip(flat.split([w.numel() for w in weights]), weights)]


class WeightDropLSTM(nn.Module):
    """A one-layer, batch-first LSTM with DropConnect on its hidden-to-hidden weights.

    The recurrence is ``torch.lstm`` -- the op ``nn.LSTM.forward`` calls (cuDNN on CUDA,
    oneDNN/native on CPU) -- given an explicit weight list that holds the dropped
    ``weight_hh``. Nothing is swapped into a module attribute, so there is no stale flat
    weight buffer to patch around. The mask comes from ``fastulm.kernels.weight_drop``
    with a seed drawn from torch's default generator, so activation checkpointing
    (which restores that generator) replays the same mask.
    """

    def __init__(self, n_in: int, n_out: int, weight_p: float):
        super().__init__()
        self.n_in, self.n_out, self.weight_p = n_in, n_out, weight_p
        self.module = LSTMWeights(n_in, n_out)
        self.weight_hh_l0_raw = nn.Parameter(torch.empty(4 * n_out, n_out))
        bound = 1.0 / math.sqrt(n_out)  # nn.LSTM's initialisation
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def zero_state(self, bs: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return like.new_zeros(1, bs, self.n_out), like.new_zeros(1, bs, self.n_out)

    def dropped_weight(self) -> torch.Tensor:
        return drop_connect(self.weight_hh_l0_raw, self.weight_p, self.training)

    def forward(
        self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        m = self.module
        weights = [m.weight_ih_l0, self.dropped_weight(), m.bias_ih_l0, m.bias_hh_l0]
        if x.is_cuda:
            weights = _cudnn_flat(weights)
        # train=True asks cuDNN for its training forward (it keeps a reserve for backward);
        # without autograd (eval, checkpointing's first pass) that is wasted work. On a CPU
        # torch ignores the flag: oneDNN's training forward runs exactly when grad is enabled
        train = self.training and torch.is_grad_enabled()
        out, h, c = torch.lstm(x, state, weights, True, 1, 0.0, train, False, True)
        return out, (h, c)

    def extra_repr(self) -> str:
        return f"{self.n_in}, {self.n_out}, weight_p={self.weight_p}"


class AWDLSTM(nn.Module):
    """The encoder. ``forward`` carries a detached hidden state across calls (LM windows);
    ``run`` is the stateless step the classifier's chunk loop uses."""

    initrange = 0.1

    def __init__(self, vocab_size: int, config: AWDLSTMConfig):
        super().__init__()
        c = config
        self.config = config
        self.emb_sz, self.n_hid, self.n_layers = c.emb_sz, c.n_hid, c.n_layers
        self.encoder = nn.Embedding(vocab_size, c.emb_sz, padding_idx=c.pad_token)
        self.encoder_dp = EmbeddingDropout(self.encoder, c.embed_p)
        sizes = [c.emb_sz] + [c.n_hid] * (c.n_layers - 1) + [c.emb_sz]
        if c.arch == "qrnn":
            layers = [
                WeightDropQRNN(sizes[i], sizes[i + 1], c.weight_p, window=2 if i == 0 else 1)
                for i in range(c.n_layers)
            ]
        else:
            layers = [WeightDropLSTM(sizes[i], sizes[i + 1], c.weight_p) for i in range(c.n_layers)]
        self.rnns = nn.ModuleList(layers)
        nn.init.uniform_(self.encoder.weight, -self.initrange, self.initrange)
        self.input_dp = RNNDropout(c.input_p)
        self.hidden_dps = nn.ModuleList(RNNDropout(c.hidden_p) for _ in range(c.n_layers))
        self.checkpoint = c.checkpoint
        self.hidden: State | None = None

    # -- state ------------------------------------------------------------------------
    def zero_state(self, bs: int) -> State:
        return [r.zero_state(bs, self.encoder.weight) for r in self.rnns]

    def reset(self) -> None:
        """Forget the carried hidden state (next call starts from zeros)."""
        self.hidden = None

    def _state_for(self, bs: int) -> State:
        """The carried state resized to ``bs`` rows: new rows start at zero, extra rows drop."""
        if self.hidden is None:
            return self.zero_state(bs)
        old = self.hidden[0][0].size(1)
        if old == bs:
            return self.hidden
        if old > bs:
            return [tuple(t[:, :bs].contiguous() for t in pair) for pair in self.hidden]
        zeros = self.zero_state(bs - old)
        return [
            tuple(torch.cat([t, z], 1) for t, z in zip(pair, zero))
            for pair, zero in zip(self.hidden, zeros)
        ]

    # -- computation ------------------------------------------------------------------
    def _layer(self, i: int, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor):
        out, (h, c) = self.rnns[i](x, (h, c))  # a QRNN's pair is (c, previous input)
        if i != self.n_layers - 1:
            out = self.hidden_dps[i](out)
        return out, h, c

    def run(self, ids: torch.Tensor, state: State, checkpoint_layers: bool = False):
        """Encode ``ids`` [bs, seq] from ``state``; returns (last-layer output, new state).

        With ``checkpoint_layers`` each LSTM layer is recomputed in backward instead of
        keeping its internals; dropout masks replay because the RNG state is restored.
        """
        out = self.input_dp(self.encoder_dp(ids))
        new_state = []
        for i in range(self.n_layers):
            h, c = state[i]
            if checkpoint_layers and torch.is_grad_enabled():
                layer = functools.partial(self._layer, i)
                out, h, c = recompute(layer, out, h, c, params=self.rnns[i].parameters())
            else:
                out, h, c = self._layer(i, out, h, c)
            new_state.append((h, c))
        return out, new_state

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out, state = self.run(ids, self._state_for(ids.size(0)), self.checkpoint)
        dtype = self.encoder.weight.dtype  # autocast may return bf16/fp16 states
        self.hidden = [tuple(t.detach().to(dtype) for t in pair) for pair in state]
        return out
