"""A QRNN layer with DropConnect on its weights: the faster alternative to the LSTM layer.

fastai 1 offered QRNN layers in its AWD-LSTM (``qrnn=True``) and MultiFiT built on them:
the gates of every time step come from one matmul over the inputs (the first layer also
sees the previous token's input, window 2), and the only sequential part is the cheap
elementwise recurrence in ``fastulm.kernels.forget_mult``. On a GPU that trains several
times faster than cuDNN's LSTM at the same sizes. fastai 2 dropped QRNNs, so there is no
reference to load weights from; the layer keeps the LSTM layer's interface (a pair of
state tensors per layer) so the encoder, the classifier's chunk loop and checkpointing
treat both alike.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from fastulm.kernels import forget_mult
from fastulm.model.dropouts import drop_connect


class WeightDropQRNN(nn.Module):
    """One QRNN layer (z, f and o gates; ``window`` 1 or 2), batch-first.

    State: ``(c [1, bs, n_out], prev_x [1, bs, (window - 1) * n_in])`` -- the cell state
    and, for window 2, the last input of the previous window (an empty tensor for window
    1), so a language model's windows join up as one sequence. DropConnect (``weight_p``)
    drops entries of the gate weights once per forward, with a mask drawn as the LSTM's is.
    """

    def __init__(self, n_in: int, n_out: int, weight_p: float, window: int = 1):
        super().__init__()
        if window not in (1, 2):
            raise ValueError(f"QRNN window must be 1 or 2, got {window}")
        self.n_in, self.n_out, self.weight_p, self.window = n_in, n_out, weight_p, window
        self.weight_raw = nn.Parameter(torch.empty(3 * n_out, window * n_in))
        self.bias = nn.Parameter(torch.empty(3 * n_out))
        bound = 1.0 / math.sqrt(window * n_in)  # nn.Linear's initialisation
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def zero_state(self, bs: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        prev = like.new_zeros(1, bs, (self.window - 1) * self.n_in)
        return like.new_zeros(1, bs, self.n_out), prev

    def dropped_weight(self) -> torch.Tensor:
        return drop_connect(self.weight_raw, self.weight_p, self.training)

    def forward(
        self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        c0, prev = state
        if self.window == 2:
            before = torch.cat([prev.transpose(0, 1).to(x.dtype), x[:, :-1]], dim=1)
            inputs = torch.cat([before, x], dim=2)
            prev = x[:, -1:].transpose(0, 1).clone()  # a copy: a view would keep all of x
        else:
            inputs = x
        gates = F.linear(inputs, self.dropped_weight(), self.bias)
        h, c = forget_mult(gates, c0[0])
        return h, (c[:, -1][None].clone(), prev)

    def extra_repr(self) -> str:
        return f"{self.n_in}, {self.n_out}, weight_p={self.weight_p}, window={self.window}"
