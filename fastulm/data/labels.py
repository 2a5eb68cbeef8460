"""Class labels: fastai's class order, the checks a labelled corpus must pass before any
training, and the reproducible random validation split.

Every source (table, folder, archive) hands its labels over as arrays (one entry per
document), so the same checks answer bad input the same way whatever the input's format.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np

from fastulm.data import DataError

TASKS = ("single_label", "multi_label", "none")


class Coder:
    """Class name -> class code, in first-seen order (the order is fixed later, by
    ``class_order``)."""

    def __init__(self, names: Iterable = ()):
        self.names: list = []
        self._index: dict = {}
        for name in names:
            self(name)

    def __call__(self, name) -> int:
        code = self._index.get(name)
        if code is None:
            code = self._index[name] = len(self.names)
            self.names.append(name)
        return code


def class_order(names: Sequence) -> list[int]:
    """Codes of ``names`` in class-id order: sorted, as fastai's CategoryMap sorts its vocab
    (strings as strings, numbers as numbers)."""
    return sorted(range(len(names)), key=names.__getitem__)


def _few(ids: np.ndarray, n: int = 5) -> str:
    shown = ", ".join(str(i) for i in ids[:n])
    return shown + (f" ... ({len(ids)} in all)" if len(ids) > n else "")


def check_labels(
    where: str,
    what: str,
    task: str,
    names: Sequence[str],
    splits: np.ndarray,
    ids: np.ndarray | Callable[[], np.ndarray],
    labels: np.ndarray,
    sets: tuple[np.ndarray, np.ndarray] | None = None,
    drop: bool = False,
) -> np.ndarray | None:
    """The documents to keep (None: all), or a DataError naming the problem.

    Single-label: every document outside ``unsup`` needs a label (or is left out with
    ``drop``), training needs two classes. Both tasks: a class of the ``valid`` or ``test``
    documents must appear in training. ``what`` names a document ("row", "file"); ``ids``
    may be a function giving them, called only to name bad documents."""
    if task == "none":
        return None
    splits, labels = np.asarray(splits), np.asarray(labels)
    keep = np.ones(len(labels), bool)
    if task == "single_label":
        missing = (labels < 0) & (splits != "unsup")
        if missing.any():
            if not drop:
                ids = np.asarray(ids() if callable(ids) else ids)
                raise DataError(
                    f"{where}: no label for {missing.sum()} {what}(s): {_few(ids[missing])};"
                    " fill them in or leave them out with --drop-unlabelled"
                )
            keep &= ~missing

    def classes(split: str) -> np.ndarray:
        docs = keep & (splits == split)
        if sets is None:
            return np.unique(labels[docs & (labels >= 0)])
        offsets, values = sets
        return np.unique(values[np.repeat(docs, np.diff(offsets))])

    train = classes("train")
    if task == "single_label" and len(train) < 2:
        if not len(train):
            raise DataError(f"{where}: no labelled training {what}s")
        raise DataError(
            f"{where}: only one class ({names[train[0]]!r}) among the training {what}s;"
            " a classifier needs at least two"
        )
    if task == "multi_label" and not len(train):
        raise DataError(
            f"{where}: no training {what} has a class (every label cell is empty);"
            " a classifier needs at least one"
        )
    for split in ("valid", "test"):
        unseen = np.setdiff1d(classes(split), train)
        if len(unseen):
            raise DataError(
                f"{where}: class {names[unseen[0]]!r} of the {split} {what}s never appears"
                " in the training ones"
            )
    return None if keep.all() else keep


def random_valid(n: int, valid_pct: float, seed: int, where: str) -> np.ndarray:
    """Which of ``n`` training documents (in corpus order) go to validation: the first
    ``int(valid_pct * n)`` of a seeded permutation, as fastai's RandomSplitter cuts it."""
    cut = int(valid_pct * n)
    if cut == 0:
        raise DataError(
            f"{where}: --valid-pct {valid_pct} of {n} documents leaves none to validate"
        )
    valid = np.zeros(n, bool)
    valid[np.random.default_rng(seed).permutation(n)[:cut]] = True
    return valid
