"""Classifier batches: documents of similar length together, padded in the encoder's layout.

Ordering follows fastai's SortedDL: validation is sorted by length (longest first); training
takes a random permutation with the longest document moved to the front, sorts chunks of
50 batches by length and shuffles the batches except the first (the longest, so an
out-of-memory shows at once) and the last. Padding follows fastai's pad_chunk: with
l = batch_max - len(doc), a row is pad * (l // bptt * bptt) + doc + pad * (l % bptt), so every
document starts on a bptt boundary and its tokens are one contiguous run.

Under DDP every rank builds the same global batches of world_size * bs documents and takes
every world_size-th row (rows rank, rank + world_size, ...), so the ranks' lengths stay
balanced; each rank pads its rows to the global batch's width, so every per-position mean
(AR/TAR) has the same normaliser as in one process with the whole batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch

from fastulm.data.epochs import EpochLoader
from fastulm.data.vocab import as_vocab

SORT_CHUNK_BATCHES = 50  # fastai sorts chunks of bs * 50 documents


class _Plan(NamedTuple):
    batches: list[np.ndarray]  # this rank's document indices, batch by batch
    widths: list[int]  # each global batch's padded width (its longest document)


def pad_batch(
    docs: Sequence[np.ndarray], pad_id: int = 1, bptt: int = 72, width: int | None = None
) -> np.ndarray:
    """Stack documents into an int64 [n, width] array in fastai's pad_chunk layout.

    ``width`` defaults to the longest document's length (it may not be shorter).
    """
    lens = np.array([len(d) for d in docs], dtype=np.int64)
    longest = int(lens.max()) if len(lens) else 0
    width = longest if width is None else width
    if width < longest:
        raise ValueError(f"pad width {width} is shorter than the longest document ({longest})")
    out = np.full((len(docs), width), pad_id, dtype=np.int64)
    lead = (width - lens) // bptt * bptt
    for r, d in enumerate(docs):  # one slice copy per row, not per token
        out[r, lead[r] : lead[r] + lens[r]] = d
    return out


def sorted_batches(
    lengths: np.ndarray, bs: int, shuffle: bool, rng: np.random.RandomState | None = None
) -> list[np.ndarray]:
    """Document indices grouped into batches, fastai SortedDL style."""
    n = len(lengths)
    if not shuffle:
        order = np.argsort(-lengths, kind="stable")
        return [order[i : i + bs] for i in range(0, n, bs)]
    assert rng is not None
    idxs = rng.permutation(n)
    if n == 0:
        return []
    at = int(np.flatnonzero(idxs == int(np.argmax(lengths)))[0])
    idxs[0], idxs[at] = idxs[at], idxs[0]
    sz = bs * SORT_CHUNK_BATCHES
    chunks = [idxs[i : i + sz] for i in range(0, n, sz)]
    order = np.concatenate([c[np.argsort(-lengths[c], kind="stable")] for c in chunks])
    batches = [order[i : i + bs] for i in range(0, n, bs)]
    if len(batches) > 2:
        middle = rng.permutation(len(batches) - 2)
        batches = [batches[0], *[batches[1 + j] for j in middle], batches[-1]]
    return batches


class ClasLoader(EpochLoader):
    """Yields (x, y): x LongTensor [bs, T] in pad_chunk layout, y LongTensor [bs] labels, or
    with ``multi_hot`` (a [n_docs, n_classes] 0/1 array, multi-label) y FloatTensor
    [bs, n_classes]."""

    unit = "documents"

    def __init__(
        self,
        split: Any,
        bs: int,
        bptt: int = 72,
        shuffle: bool = False,
        seed: int = 0,
        pad_id: int = 1,
        max_len: int | None = None,
        backwards: bool = False,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool | None = None,
        multi_hot: np.ndarray | None = None,
    ) -> None:
        if bs < 1 or bptt < 1:
            raise ValueError(f"bs and bptt must be positive, got bs={bs}, bptt={bptt}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in range for world_size {world_size}")
        if max_len is not None and max_len < 1:
            raise ValueError(f"max_len must be positive or None, got {max_len}")
        self.split = split
        self.bs, self.bptt, self.shuffle, self.seed = bs, bptt, shuffle, seed
        self.pad_id, self.max_len, self.backwards = pad_id, max_len, backwards
        self.rank, self.world_size = rank, world_size
        self.global_bs = bs * world_size
        # fastai drops the last incomplete batch when training (it would be the smallest).
        self.drop_last = shuffle if drop_last is None else drop_last

        self._ids = split.ids
        self._offsets = np.asarray(split.offsets, dtype=np.int64)
        self._lengths = np.diff(self._offsets)
        self._labels = np.asarray(split.labels, dtype=np.int64)
        self._multi_hot = None if multi_hot is None else np.asarray(multi_hot, dtype=np.float32)
        if self._multi_hot is not None and len(self._multi_hot) != len(self._labels):
            raise ValueError(
                f"multi_hot has {len(self._multi_hot)} rows for {len(self._labels)} docs"
            )
        n_unlabelled = int(np.count_nonzero(self._labels < 0))
        if n_unlabelled:
            name = getattr(split, "name", "split")
            raise ValueError(
                f"{name}: {n_unlabelled} of {len(self._labels)} documents have no label (-1); "
                "a classifier trains and validates on labelled documents only"
            )

        self._start_epochs()

    # ---- plan -----------------------------------------------------------------------------
    def _plan(self, epoch: int) -> _Plan:
        """This rank's batches (document indices, padded width) for `epoch` (cached)."""
        if self._cached is not None and self._cached[0] == epoch:
            return self._cached[1]
        rng = np.random.RandomState([self.seed % 2**32, epoch, 0]) if self.shuffle else None
        batches = sorted_batches(self._lengths, self.global_bs, self.shuffle, rng)
        if self.drop_last and batches and len(batches[-1]) < self.global_bs:
            batches = batches[:-1]
        lengths = self._lengths if self.max_len is None else np.minimum(self._lengths, self.max_len)
        mine = [(b[self.rank :: self.world_size], int(lengths[b].max())) for b in batches]
        mine = [(b, w) for b, w in mine if len(b)]
        plan = _Plan([b for b, _ in mine], [w for _, w in mine])
        self._cached = (epoch, plan)
        return plan

    def batch_indices(self, epoch: int | None = None) -> list[np.ndarray]:
        """The document indices of each of this rank's batches in `epoch`."""
        return [b.copy() for b in self._plan(self.epoch if epoch is None else epoch).batches]

    def _doc(self, i: int) -> np.ndarray:
        d = self._ids[self._offsets[i] : self._offsets[i + 1]]
        if self.backwards:
            d = d[::-1]
        if self.max_len is not None and len(d) > self.max_len:
            d = d[len(d) - self.max_len :]  # the encoder keeps only the last max_len positions
        return d

    def _batch(self, idx: np.ndarray, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = pad_batch([self._doc(int(i)) for i in idx], self.pad_id, self.bptt, width)
        targets = self._labels if self._multi_hot is None else self._multi_hot
        return torch.from_numpy(x), torch.from_numpy(targets[idx].copy())

    # ---- iteration (EpochLoader) ---------------------------------------------------------
    def _n_batches(self, plan: _Plan) -> int:
        return len(plan.batches)

    def _batch_at(self, plan: _Plan, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self._batch(plan.batches[i], plan.widths[i])

    # ---- display --------------------------------------------------------------------------
    def show_batch(
        self,
        vocab: Any,
        label_names: Sequence[str] | None = None,
        n: int = 6,
        trunc_at: int = 40,
    ) -> list[tuple[str, str]]:
        """Print the first `n` documents of this epoch's first batch: text and category."""
        itos = as_vocab(vocab).itos
        plan = self._plan(self.epoch)
        rows: list[tuple[str, str]] = []
        if plan.batches:
            for i in plan.batches[0][:n]:
                toks = self._doc(int(i))[:trunc_at].tolist()
                if self._multi_hot is not None:
                    on = np.flatnonzero(self._multi_hot[i])
                    name = ";".join(label_names[c] if label_names else str(c) for c in on)
                else:
                    label = int(self._labels[i])
                    name = label_names[label] if label_names and label >= 0 else str(label)
                rows.append((" ".join(itos[t] for t in toks), name))
        width = 90
        print(f"{'':>3}  {'text':<{width}}  category")
        for j, (text, name) in enumerate(rows):
            shown = text if len(text) <= width else text[: width - 3] + "..."
            print(f"{j:>3}  {shown:<{width}}  {name}")
        return rows
