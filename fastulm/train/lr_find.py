"""The learning-rate finder: an exponential sweep that stops when the loss diverges.

Every layer group gets the same rate, growing from ``start_lr`` to ``end_lr`` over ``num_it``
steps; the loss is smoothed like the progress bar's and the sweep stops once it exceeds four
times its best value. The model, optimizer and random generators are put back afterwards, so
the finder leaves no trace on training.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from fastulm.train import checkpoint as ckpt
from fastulm.train.plots import plot_lr_find
from fastulm.train.schedule import ExpSweep


@dataclass
class LRFindResult:
    lrs: list[float]
    losses: list[float]
    suggestions: dict[str, float] = field(default_factory=dict)
    plot: Path | None = None

    @property
    def valley(self) -> float:
        return self.suggestions["valley"]

    @property
    def steep(self) -> float:
        return self.suggestions["steep"]


def valley(lrs: np.ndarray, losses: np.ndarray) -> float:
    """A rate inside the longest run over which the loss keeps going down.

    The longest decreasing subsequence of the smoothed losses marks the valley; the
    suggestion sits a little past its middle, where the loss still falls but well before
    the bottom (past which training becomes unstable).
    """
    n = len(losses)
    best_len = np.ones(n, dtype=np.int64)
    for i in range(1, n):
        lower = losses[:i] > losses[i]
        if lower.any():
            best_len[i] = best_len[:i][lower].max() + 1
    end = int(best_len.argmax())
    start = end - int(best_len[end]) + 1
    third = (end - start) / 3
    return float(lrs[start + int(third) + int(third / 2)])


def steep(lrs: np.ndarray, losses: np.ndarray) -> float:
    """The rate where the loss falls fastest per unit of log learning rate."""
    slopes = np.diff(losses) / np.diff(np.log(lrs))
    return float(lrs[int(np.argmin(slopes))])


def lr_find(
    learn,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    num_it: int = 100,
    stop_div: bool = True,
    plot: bool = True,
) -> LRFindResult:
    saved_model = copy.deepcopy(learn.model.state_dict())
    saved_opt = copy.deepcopy(learn.opt.state_dict())
    saved_rng = ckpt.rng_state()
    sweep = ExpSweep(start_lr, end_lr, max(num_it, 6))
    lrs: list[float] = []
    losses: list[float] = []
    avg, best, it, epoch = 0.0, math.inf, 0, 0
    n_groups = len(learn.layer_groups)
    learn.model.train()
    learn._reset_model()
    stopped = False
    bar = tqdm(total=sweep.num_it, desc="lr_find", disable=not learn.show_progress, leave=False)
    try:
        while it < sweep.num_it and not stopped:
            learn.train_dl.set_epoch(epoch)
            epoch += 1
            for x, y in learn.train_dl:
                lr = sweep.lr(it)
                loss = learn._step(x, y, [lr] * n_groups, None).item()
                it += 1
                bar.update(1)
                bar.set_postfix(lr=f"{lr:.1e}", refresh=False)
                stopped = learn.stop_requested is not None and learn.stop_requested()
                if stopped:
                    break
                if not math.isfinite(loss):
                    break
                avg = 0.98 * avg + 0.02 * loss
                smooth = avg / (1 - 0.98**it)
                lrs.append(lr)
                losses.append(smooth)
                best = min(best, smooth)
                if (stop_div and smooth > 4 * best) or it >= sweep.num_it:
                    break
            else:
                continue
            break
    finally:
        bar.close()
        learn.model.load_state_dict(saved_model)
        learn.opt.load_state_dict(saved_opt)
        learn.opt.zero_grad(set_to_none=True)
        ckpt.set_rng_state(saved_rng)
        learn._reset_model()
    if stopped:
        raise KeyboardInterrupt  # the model is restored; nothing of the sweep is kept
    result = LRFindResult(lrs, losses)
    trimmed_lrs = np.asarray(lrs[num_it // 10 : -5])
    trimmed = np.asarray(losses[num_it // 10 : -5])
    if len(trimmed) >= 3:
        result.suggestions = {"valley": valley(trimmed_lrs, trimmed)}
        result.suggestions["steep"] = steep(trimmed_lrs, trimmed)
    if learn.dist.is_main:
        if plot and lrs:
            result.plot = learn.path / "lr_find.png"
            plot_lr_find(lrs, losses, result.suggestions, result.plot)
        if result.suggestions:
            text = ", ".join(f"{k} {v:.2e}" for k, v in result.suggestions.items())
            print(f"lr_find: suggested learning rates: {text}")
        else:
            print("lr_find: too few steps before the loss diverged to suggest a rate")
    return result


__all__ = ["LRFindResult", "lr_find", "steep", "valley"]
