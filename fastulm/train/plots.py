"""PNG plots of a run (matplotlib's Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from fastulm.files import atomic_write


def _save(fig, path: Path) -> None:
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)


def plot_losses(history: dict, path: str | Path) -> None:
    """Train loss per step (smoothed like the progress bar) and validation loss per epoch."""
    steps = np.asarray(history["steps"], dtype=np.float64)
    fig, ax = plt.subplots(figsize=(7, 4))
    if len(steps):
        ax.plot(np.arange(1, len(steps) + 1), _smooth(steps), label="train (smoothed)")
    if history["valid"]:
        at, loss = zip(*history["valid"])
        ax.plot(at, loss, "o-", label="valid")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend()
    ax.grid(alpha=0.3)
    _save(fig, Path(path))


def _smooth(values: np.ndarray, beta: float = 0.98) -> np.ndarray:
    out = np.empty_like(values)
    avg = 0.0
    for i, v in enumerate(values):
        avg = beta * avg + (1 - beta) * v
        out[i] = avg / (1 - beta ** (i + 1))
    return out


def plot_lr_find(lrs, losses, suggestions: dict[str, float], path: str | Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(lrs, losses)
    for (name, lr), color in zip(suggestions.items(), ["C1", "C2", "C3"]):
        loss = float(np.interp(np.log(lr), np.log(lrs), losses))
        ax.plot([lr], [loss], "o", color=color, label=f"{name}: {lr:.2e}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("loss (smoothed)")
    ax.legend()
    ax.grid(alpha=0.3)
    _save(fig, Path(path))


def plot_confusion(matrix: np.ndarray, names: list[str], path: str | Path) -> None:
    """Validation counts, true class by row and predicted class by column."""
    n = len(names)
    fig, ax = plt.subplots(figsize=(2.5 + 0.6 * n, 2 + 0.6 * n))
    ax.imshow(matrix, cmap="Blues")
    top = matrix.max() if matrix.size else 0
    for i in range(n):
        for j in range(n):
            value = int(matrix[i, j])
            color = "white" if top and value > top / 2 else "black"
            ax.text(j, i, str(value), ha="center", va="center", color=color)
    ax.set_xticks(range(n), names, rotation=45 if n > 4 else 0, ha="right" if n > 4 else "center")
    ax.set_yticks(range(n), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    ax.set_title("confusion matrix (validation)")
    fig.tight_layout()
    _save(fig, Path(path))
