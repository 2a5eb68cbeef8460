"""From a classifier's scores to probabilities and label names, without torch.

Shared by the torch prediction loop and the ONNX runtime path, so both read a run's task the
same way: ``single_label`` is one softmax over the classes and the most likely class;
``multi_label`` is one sigmoid per class and every class over ``threshold``, joined by
``label_delim`` (the empty string when none is).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

TASKS = ("single_label", "multi_label")


@dataclass(frozen=True)
class Task:
    """How predictions are read off a classifier head (config.json's top-level keys)."""

    kind: str = "single_label"
    label_delim: str | None = None
    threshold: float = 0.5

    @classmethod
    def from_config(cls, config: dict[str, Any], where: str = "config.json") -> Task:
        kind = config.get("task") or "single_label"
        if kind not in TASKS:
            raise ValueError(f"{where}: unknown task {kind!r} (expected one of {TASKS})")
        threshold = config.get("threshold")
        threshold = 0.5 if threshold is None else threshold
        if not isinstance(threshold, (int, float)) or not 0 <= threshold <= 1:
            raise ValueError(f"{where}: threshold must be a number in [0, 1], got {threshold!r}")
        return cls(kind, config.get("label_delim"), float(threshold))


@dataclass
class Predictions:
    labels: list[str]  # one per text: a class name, or (multi_label) the names over threshold
    probs: np.ndarray  # float32 [n_texts, n_classes]: softmax, or per-class sigmoids
    names: list[str]  # the class names, in the order of the probability columns


def check_threshold(threshold: float | None) -> None:
    if threshold is not None and not (np.isfinite(threshold) and 0 <= threshold <= 1):
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")


def probabilities(logits: np.ndarray, task: Task) -> np.ndarray:
    """float32 [n, n_classes]: softmax rows (single_label) or per-class sigmoids."""
    x = np.asarray(logits, dtype=np.float64)
    if task.kind == "multi_label":
        p = np.empty_like(x)
        pos = x >= 0  # the two forms of the sigmoid that never overflow
        p[pos] = 1.0 / (1.0 + np.exp(-x[pos]))
        e = np.exp(x[~pos])
        p[~pos] = e / (1.0 + e)
    else:
        e = np.exp(x - x.max(axis=1, keepdims=True))
        p = e / e.sum(axis=1, keepdims=True)
    return p.astype(np.float32)


def class_names(names: Sequence[str], n_classes: int) -> list[str]:
    """The run's class names, or "0", "1", ... for a run that has none."""
    return list(names) if names else [str(i) for i in range(n_classes)]


def pick_labels(
    probs: np.ndarray, names: Sequence[str], task: Task, threshold: float | None = None
) -> list[str]:
    """Each row's label: the argmax class, or (multi_label) the classes over the threshold."""
    names = class_names(names, probs.shape[1])
    if task.kind != "multi_label":
        return [names[i] for i in np.argmax(probs, axis=1).tolist()]
    t = task.threshold if threshold is None else threshold
    delim = task.label_delim if task.label_delim is not None else ";"
    return [delim.join(names[j] for j in np.flatnonzero(row > t)) for row in probs]
