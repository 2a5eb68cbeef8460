"""The text classifier: the encoder run over a long document in bptt chunks, then a
masked concat-pooling head.

Gradient checkpointing (``config.checkpoint``) wraps each bptt chunk inside the kept window:
only the chunk's output and its final (h, c) stay alive, the LSTM internals are recomputed in
backward with the same dropout masks (see recompute.py: the first pass runs without autograd). Under
autocast the logits are returned in fp32 and ``raw`` in the compute dtype (see lm.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import nn

from fastulm.kernels import masked_concat_pool
from fastulm.kernels.dispatch import acc_dtype
from fastulm.model.awd_lstm import AWDLSTM
from fastulm.model.batchnorm import GlobalBatchNorm1d
from fastulm.model.config import AWDLSTMConfig, resolve_config
from fastulm.model.recompute import recompute


@dataclass
class ClassifierOutput:
    logits: torch.Tensor  # [bs, n_classes], fp32
    raw: torch.Tensor  # encoder output over the kept window [bs, T_kept, emb] (AR/TAR)
    dropped: torch.Tensor  # the same tensor: the reference regularizes the encoder output


class Encoded(NamedTuple):
    output: torch.Tensor  # [bs, T_kept, emb]; zeros where a row has not started yet
    mask: torch.Tensor  # [bs, T_kept], True at padding
    late_start: bool  # some row starts inside the last bptt positions (see PoolingLinearClassifier)


def _first_real(ids: torch.Tensor, pad_idx: int) -> torch.Tensor:
    """Per row, the position of its first non-pad token (seq len when it has none), on CPU."""
    real = ids != pad_idx
    first = real.int().argmax(1)
    return torch.where(real.any(1), first, ids.size(1)).cpu()


class SentenceEncoder(nn.Module):
    """Runs the encoder over ``[bs, seq]`` ids in pad_chunk layout, ``bptt`` tokens at a time.

    Layout (fastai's ``pad_chunk``): each row's real tokens are contiguous and start at a
    multiple of ``bptt``; padding before them comes in whole chunks, padding after them is
    the remainder. A row joins the batch with a zero state at the chunk where its tokens
    start and stays in it to the end, so -- unlike the reference, which runs only the rows
    whose *current* token is real (fastai issue 3379) -- no real token is ever skipped.
    Only the last ``max_len`` positions are kept for pooling; chunks before them run under
    ``no_grad`` (the state is detached between chunks, so gradients are unchanged).
    """

    def __init__(self, bptt: int, module: AWDLSTM, pad_idx: int = 1, max_len: int | None = None):
        super().__init__()
        self.bptt, self.module, self.pad_idx, self.max_len = bptt, module, pad_idx, max_len

    def reset(self) -> None:
        self.module.reset()

    def _chunk(self, ids: torch.Tensor, *flat_state: torch.Tensor):
        state = list(zip(flat_state[0::2], flat_state[1::2]))
        out, new = self.module.run(ids, state)
        return out, *[t for hc in new for t in hc]

    def forward(self, ids: torch.Tensor) -> Encoded:
        bs, sl = ids.shape
        starts = _first_real(ids, self.pad_idx)
        has_real = starts < sl
        if bool((starts[has_real] % self.bptt != 0).any()):
            row = int(torch.nonzero(has_real & (starts % self.bptt != 0))[0])
            raise ValueError(
                f"classifier input row {row} starts at position {int(starts[row])}, not a "
                f"multiple of bptt={self.bptt}: pad with fastai's pad_chunk layout"
            )
        keep_from = 0 if self.max_len is None else max(0, sl - self.max_len)
        # chunk i is kept when sl - i <= max_len, as in the reference
        first_kept = -(-keep_from // self.bptt) * self.bptt
        use_ckpt = self.module.checkpoint and self.training and torch.is_grad_enabled()

        state = self.module.zero_state(bs)
        flat = [t for hc in state for t in hc]
        outs = []
        for i in range(0, sl, self.bptt):
            active = starts <= i
            n_active = int(active.sum())
            chunk = ids[:, i : i + self.bptt]
            if n_active == 0:  # every row starts later: nothing to run, zero output
                if i >= first_kept:
                    w = self.module.encoder.weight
                    outs.append(w.new_zeros(bs, chunk.size(1), self.module.emb_sz))
                continue
            rows = None if n_active == bs else torch.nonzero(active).squeeze(1).to(ids.device)
            sub_ids = chunk if rows is None else chunk.index_select(0, rows)
            sub_flat = flat if rows is None else [t.index_select(1, rows) for t in flat]
            if i < first_kept:
                with torch.no_grad():
                    out, *new_flat = self._chunk(sub_ids, *sub_flat)
            elif use_ckpt:
                params = self.module.parameters()
                out, *new_flat = recompute(self._chunk, sub_ids, *sub_flat, params=params)
            else:
                out, *new_flat = self._chunk(sub_ids, *sub_flat)
            new_flat = [t.detach().to(f.dtype) for t, f in zip(new_flat, flat)]
            if rows is None:
                flat = new_flat
            else:
                flat = [f.index_copy(1, rows, t) for f, t in zip(flat, new_flat)]
                out = out.new_zeros(bs, *out.shape[1:]).index_copy(0, rows, out)
            if i >= first_kept:
                outs.append(out)
        late_start = bool((starts[has_real] > sl - self.bptt).any())
        return Encoded(torch.cat(outs, dim=1), ids[:, first_kept:] == self.pad_idx, late_start)


def lin_bn_drop(n_in: int, n_out: int, p: float, act: nn.Module | None) -> nn.Sequential:
    """BatchNorm -> Dropout (omitted when p == 0) -> Linear(no bias) -> act, fastai's indices."""
    bn = GlobalBatchNorm1d(n_in)  # plain BatchNorm1d unless several processes train together
    nn.init.ones_(bn.weight)
    nn.init.constant_(bn.bias, 1e-3)
    layers: list[nn.Module] = [bn]
    if p != 0:
        layers.append(nn.Dropout(p))
    layers.append(nn.Linear(n_in, n_out, bias=False))
    if act is not None:
        layers.append(act)
    return nn.Sequential(*layers)


def _last_real(out: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Each row's output at its last non-pad position."""
    trailing = (~mask).flip(1).int().argmax(1)
    idx = mask.size(1) - 1 - trailing
    return out[torch.arange(out.size(0), device=out.device), idx]


class PoolingLinearClassifier(nn.Module):
    """Masked concat pooling [last, max, mean] then the LinBnDrop stack.

    The pool finds a row's last token by counting the pads in the last ``bptt`` positions,
    which assumes those pads are all trailing. When the sequence length is not a multiple
    of bptt and a row starts in the short last chunk, leading pads fall in that window too
    (the reference then pools a wrong position); ``late_start`` marks such batches and the
    last state is taken from the true last token instead.
    """

    def __init__(self, dims: list[int], ps: list[float], bptt: int):
        super().__init__()
        if len(ps) != len(dims) - 1:
            raise ValueError(f"{len(dims) - 1} head layers but {len(ps)} dropout values")
        acts = [nn.ReLU(inplace=True)] * (len(dims) - 2) + [None]
        self.layers = nn.Sequential(
            *(lin_bn_drop(i, o, p, a) for i, o, p, a in zip(dims[:-1], dims[1:], ps, acts))
        )
        self.bptt = bptt

    def forward(
        self, out: torch.Tensor, mask: torch.Tensor, late_start: bool = False
    ) -> torch.Tensor:
        pooled = masked_concat_pool(out, mask, self.bptt)
        if late_start:
            pooled = torch.cat(
                [_last_real(out, mask).to(pooled.dtype), pooled[:, out.size(-1) :]], 1
            )
        return self.layers(pooled)


class TextClassifier(nn.Module):
    """Children ``0`` (SentenceEncoder) and ``1`` (head), as the reference's SequentialRNN."""

    def __init__(self, vocab_size: int, n_classes: int, config: AWDLSTMConfig):
        super().__init__()
        self.config = config
        c = config
        self.add_module(
            "0", SentenceEncoder(c.bptt, AWDLSTM(vocab_size, c), c.pad_token, c.max_len)
        )
        dims = [c.emb_sz * 3, *c.lin_ftrs, n_classes]
        ps = [c.output_p, *c.head_ps]
        self.add_module("1", PoolingLinearClassifier(dims, ps, c.bptt))

    @property
    def body(self) -> AWDLSTM:
        return self._modules["0"].module

    @property
    def head(self) -> PoolingLinearClassifier:
        return self._modules["1"]

    def reset(self) -> None:
        self.body.reset()

    def forward(self, x: torch.Tensor) -> ClassifierOutput:
        out, mask, late_start = self._modules["0"](x)
        logits = self.head(out, mask, late_start)
        logits = logits.to(acc_dtype(logits.dtype))
        return ClassifierOutput(logits, out, out)

    def layer_groups(self) -> list[list[nn.Parameter]]:
        """[embedding, rnn0, rnn1, rnn2, head], as fastai's split."""
        body = self.body
        return [
            list(body.encoder.parameters()),
            *[list(r.parameters()) for r in body.rnns],
            list(self.head.parameters()),
        ]


def get_classifier(
    vocab_size: int, n_classes: int, config: AWDLSTMConfig | None = None, **overrides: Any
) -> TextClassifier:
    """An AWD-LSTM classifier; state-dict keys equal fastai's ``get_text_classifier``.

    ``config`` defaults to ``AWDLSTMConfig.classifier()``; keyword overrides replace its
    fields and ``drop_mult=`` scales its dropouts (not the head's inner ``head_ps``).
    """
    return TextClassifier(vocab_size, n_classes, resolve_config(config, "classifier", overrides))
