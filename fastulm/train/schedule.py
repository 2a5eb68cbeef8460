"""The one-cycle schedule: cosine warm-up then cosine annealing, as fastai's fit_one_cycle.

The schedule is a pure function of the fraction of training done, so a resumed run only needs
the step count to land on exactly the same learning rate and momentum.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


def cos_anneal(start: float, end: float, pos: float) -> float:
    """Cosine from ``start`` (pos=0) to ``end`` (pos=1)."""
    return start + (1 + math.cos(math.pi * (1 - pos))) * (end - start) / 2


def two_phase(pos: float, pct_start: float, start: float, middle: float, end: float) -> float:
    """``start -> middle`` over the first ``pct_start`` of training, ``middle -> end`` after."""
    if pos < pct_start:
        return cos_anneal(start, middle, pos / pct_start)
    return cos_anneal(middle, end, (pos - pct_start) / (1 - pct_start))


def normalize_moms(moms: Sequence[float]) -> tuple[float, float, float]:
    """``(0.8, 0.7)`` means 0.8 -> 0.7 -> 0.8, the fastai-1 walkthrough's spelling."""
    moms = tuple(float(m) for m in moms)
    if len(moms) == 2:
        return (moms[0], moms[1], moms[0])
    if len(moms) != 3:
        raise ValueError(f"moms must have 2 or 3 values, got {moms}")
    return moms  # type: ignore[return-value]


@dataclass
class OneCycle:
    """Per-group learning rates and a shared momentum for step ``i`` of ``total`` steps.

    fastai evaluates its schedule at ``pos = i / total`` before each batch, so the first
    batch runs at ``lr_max / div`` and the last one just above ``lr_max / div_final``.
    """

    lr_max: list[float]
    total: int
    pct_start: float = 0.25
    div: float = 25.0
    div_final: float = 1e5
    moms: tuple[float, float, float] = (0.95, 0.85, 0.95)

    def pos(self, step: int) -> float:
        # capped: with randomized bptt an epoch may run a few more windows than planned
        return min(step / self.total, 1.0)

    def lrs(self, step: int) -> list[float]:
        p = self.pos(step)
        return [
            two_phase(p, self.pct_start, lr / self.div, lr, lr / self.div_final)
            for lr in self.lr_max
        ]

    def mom(self, step: int) -> float:
        return two_phase(self.pos(step), self.pct_start, *self.moms)


@dataclass
class ExpSweep:
    """lr_find's exponential sweep from ``start`` to ``end`` over ``num_it`` steps."""

    start: float
    end: float
    num_it: int

    def lr(self, step: int) -> float:
        return self.start * (self.end / self.start) ** (step / self.num_it)
