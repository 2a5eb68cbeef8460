"""The recurrent state a language model carries from one batch to the next.

An LM epoch is truncated backpropagation through time: the hidden state at the end of a
batch is the start of the next one. A checkpoint taken mid-epoch must therefore hold it, or
the resumed run would restart its streams from zeros. The state is whatever tensors the
model's modules keep in a ``hidden`` attribute (fastai's convention, kept by fastulm.model).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def _pack(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, (list, tuple)):
        return [_pack(v) for v in value]
    return value


def _unpack(saved: Any, like: Any) -> Any:
    if isinstance(saved, torch.Tensor):
        return saved
    if isinstance(saved, list):
        kind = type(like) if isinstance(like, (list, tuple)) else list
        likes = like if isinstance(like, (list, tuple)) else [None] * len(saved)
        items = [_unpack(s, lk) for s, lk in zip(saved, likes)]
        return kind(items) if kind in (list, tuple) else list(items)
    return saved


def carried_state(model: nn.Module) -> dict[str, Any]:
    """``{module name: hidden}`` for every module that keeps a ``hidden`` attribute."""
    state = {}
    for name, module in model.named_modules():
        hidden = module.__dict__.get("hidden")
        if hidden is not None and not isinstance(hidden, nn.Module):
            state[name] = _pack(hidden)
    return state


def restore_carried_state(model: nn.Module, state: dict[str, Any]) -> None:
    modules = dict(model.named_modules())
    for name, saved in state.items():
        module = modules[name]
        module.hidden = _unpack(saved, module.__dict__.get("hidden"))
