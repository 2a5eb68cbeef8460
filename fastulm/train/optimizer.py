"""Parameter groups, discriminative learning rates, freezing, and the Adam that fastai uses.

fastai's default optimizer is Adam(mom=0.9, sqr_mom=0.99, eps=1e-5) with decoupled weight
decay 0.01, skipped for normalisation layers and biases (``wd_bn_bias=False``). With
``betas=(mom, sqr_mom)`` torch's AdamW does exactly that update, bias correction included,
so it is used here rather than a hand-written copy. Each layer group becomes two torch
groups (decayed and not) tagged with its ``layer_group`` index, so discriminative learning
rates are set per layer group.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm, nn.InstanceNorm1d)

LR = float | slice | Sequence[float]


def even_mults(start: float, stop: float, n: int) -> list[float]:
    """``n`` values from ``start`` to ``stop``, each one the same factor above the last."""
    if n == 1:
        return [float(stop)]
    step = (stop / start) ** (1 / (n - 1))
    return [start * step**i for i in range(n)]


def lr_range(lr: LR, n_groups: int) -> list[float]:
    """One learning rate per layer group, as fastai spreads ``lr`` or ``slice(lo, hi)``.

    A float gives every group the same rate; ``slice(hi)`` gives the last group ``hi`` and the
    others ``hi/10``; ``slice(lo, hi)`` spreads geometrically from ``lo`` (first group) to
    ``hi`` (last group).
    """
    if isinstance(lr, slice):
        if lr.start is None:
            return [lr.stop / 10] * (n_groups - 1) + [float(lr.stop)]
        return even_mults(float(lr.start), float(lr.stop), n_groups)
    if isinstance(lr, (list, tuple)):
        if len(lr) != n_groups:
            raise ValueError(f"{len(lr)} learning rates given for {n_groups} layer groups")
        return [float(v) for v in lr]
    return [float(lr)] * n_groups


def no_decay_params(model: nn.Module) -> set[int]:
    """ids of the parameters fastai exempts from weight decay: norm layers and ``.bias``."""
    ids: set[int] = set()
    for module in model.modules():
        if isinstance(module, NORM_TYPES):
            ids.update(id(p) for p in module.parameters(recurse=False))
        bias = getattr(module, "bias", None)
        if isinstance(bias, nn.Parameter):
            ids.add(id(bias))
    return ids


def norm_params(model: nn.Module) -> set[int]:
    """ids of normalisation-layer parameters (kept trainable when frozen, train_bn=True)."""
    ids: set[int] = set()
    for module in model.modules():
        if isinstance(module, NORM_TYPES):
            ids.update(id(p) for p in module.parameters(recurse=False))
    return ids


def complete_groups(model: nn.Module, layer_groups: list[list[nn.Parameter]]) -> list[list]:
    """Layer groups without duplicates; any parameter the model lists but no group holds
    joins the last group, so nothing is silently left out of the optimizer."""
    seen: set[int] = set()
    groups: list[list[nn.Parameter]] = []
    for group in layer_groups:
        kept = []
        for p in group:
            if id(p) not in seen:
                seen.add(id(p))
                kept.append(p)
        groups.append(kept)
    groups[-1].extend(p for p in model.parameters() if id(p) not in seen)
    return groups


def make_optimizer(
    model: nn.Module,
    layer_groups: list[list[nn.Parameter]],
    wd: float = 0.01,
    mom: float = 0.9,
    sqr_mom: float = 0.99,
    eps: float = 1e-5,
    lr: float = 1e-3,
) -> torch.optim.AdamW:
    exempt = no_decay_params(model)
    torch_groups = []
    for i, group in enumerate(layer_groups):
        decay = [p for p in group if id(p) not in exempt]
        plain = [p for p in group if id(p) in exempt]
        for params, group_wd in ((decay, wd), (plain, 0.0)):
            if params:
                torch_groups.append({"params": params, "weight_decay": group_wd, "layer_group": i})
    fused = all(p.is_cuda for p in model.parameters())
    return torch.optim.AdamW(
        torch_groups, lr=lr, betas=(mom, sqr_mom), eps=eps, weight_decay=wd, fused=fused or None
    )


def set_hypers(opt: torch.optim.Optimizer, lrs: list[float], mom: float | None = None) -> None:
    """Set each layer group's learning rate (and the shared momentum, Adam's beta1)."""
    for g in opt.param_groups:
        g["lr"] = lrs[g["layer_group"]]
        if mom is not None:
            g["betas"] = (mom, g["betas"][1])


def set_weight_decay(opt: torch.optim.Optimizer, wd: float) -> None:
    for g in opt.param_groups:
        if g["weight_decay"] != 0.0:
            g["weight_decay"] = wd


def freeze_to(model: nn.Module, layer_groups: list[list[nn.Parameter]], n: int) -> None:
    """Train only layer groups ``[n:]`` (python indexing); norm layers always train."""
    keep = norm_params(model)
    n_groups = len(layer_groups)
    start = n if n >= 0 else max(n_groups + n, 0)
    for i, group in enumerate(layer_groups):
        for p in group:
            p.requires_grad_(i >= start or id(p) in keep)
