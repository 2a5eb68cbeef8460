"""Language-model batches: shuffled documents laid end to end as `bs` parallel streams.

The layout is fastai's LMDataLoader: the concatenated corpus (minus the one token kept as the
final target) is cut down to a multiple of the global batch size, and row r of every batch is
the r-th contiguous piece of it, so the hidden state carried from one batch to the next
continues the same text. Nothing is copied per epoch except a permutation of document order
and its cumulative lengths; each batch gathers its tokens straight from the memory-mapped ids.

Under DDP every rank builds the same global streams (world_size * bs of them) and keeps its
own block of rows, so world_size ranks with bs each see exactly the batches one process with
bs * world_size would see.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fastulm.data.epochs import EpochLoader
from fastulm.data.vocab import as_vocab

# The original AWD-LSTM's randomized window lengths: bptt with probability 0.95, else bptt/2,
# then a normal draw with this spread, never shorter than RAND_MIN_LEN.
RAND_SIGMA = 5.0
RAND_MIN_LEN = 5
# Upper cap (bptt + this) so one unlucky draw cannot blow the memory budget; at 4 sigma it
# practically never binds.
RAND_MAX_EXTRA = 20


def _as_splits(split_or_splits: Any) -> list[Any]:
    if isinstance(split_or_splits, (list, tuple)):
        splits = list(split_or_splits)
    else:
        splits = [split_or_splits]
    if not splits:
        raise ValueError("LMLoader needs at least one split")
    return splits


@dataclass(frozen=True)
class _Plan:
    epoch: int
    order: np.ndarray  # document indices in stream order
    cum: np.ndarray  # cumulative lengths of the ordered documents, n_docs + 1
    win_start: np.ndarray  # time offset of each batch within a stream
    win_len: np.ndarray  # length of each batch in time


class LMLoader(EpochLoader):
    """Yields (x, y) LongTensors [bs, seq] with y the token after x; seq is bptt except the last."""

    unit = "streams"

    def __init__(
        self,
        split_or_splits: Any,
        bs: int,
        bptt: int = 72,
        shuffle: bool = False,
        seed: int = 0,
        backwards: bool = False,
        rank: int = 0,
        world_size: int = 1,
        random_bptt: bool = False,
    ) -> None:
        if bs < 1 or bptt < 1:
            raise ValueError(f"bs and bptt must be positive, got bs={bs}, bptt={bptt}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in range for world_size {world_size}")
        splits = _as_splits(split_or_splits)
        self.bs, self.bptt, self.shuffle, self.seed = bs, bptt, shuffle, seed
        self.backwards, self.rank, self.world_size = backwards, rank, world_size
        self.random_bptt = random_bptt
        self.global_bs = bs * world_size

        # Per document: which split, where its tokens start in that split's flat ids, how many.
        self._ids = [s.ids for s in splits]
        offsets = [np.asarray(s.offsets, dtype=np.int64) for s in splits]
        self._starts = np.concatenate([o[:-1] for o in offsets])
        self._lengths = np.concatenate([np.diff(o) for o in offsets])
        self._split_of = np.concatenate(
            [np.full(len(o) - 1, i, dtype=np.int32) for i, o in enumerate(offsets)]
        )
        total = int(self._lengths.sum())
        corpus = (total - 1) // self.global_bs * self.global_bs if total > 0 else 0
        self.bl = corpus // self.global_bs  # tokens per stream
        if self.bl < 1:
            raise ValueError(
                f"corpus has {total} tokens: too few for {self.global_bs} streams "
                f"(bs={bs} x world_size={world_size}); lower bs"
            )

        self._start_epochs()

    # ---- per-epoch plan -------------------------------------------------------------------
    def _rng(self, epoch: int, stream: int) -> np.random.RandomState:
        return np.random.RandomState([self.seed % 2**32, epoch, stream])

    def _plan(self, epoch: int) -> _Plan:
        """Document order, its cumulative lengths and the time windows for `epoch` (cached)."""
        if self._cached is not None and self._cached.epoch == epoch:
            return self._cached
        n_docs = len(self._lengths)
        order = self._rng(epoch, 0).permutation(n_docs) if self.shuffle else np.arange(n_docs)
        cum = np.zeros(n_docs + 1, dtype=np.int64)
        np.cumsum(self._lengths[order], out=cum[1:])
        win_start, win_len = self._windows(epoch)
        self._cached = _Plan(epoch, order, cum, win_start, win_len)
        return self._cached

    def _windows(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        bl, bptt = self.bl, self.bptt
        if not self.random_bptt:
            starts = np.arange(0, bl, bptt, dtype=np.int64)
            return starts, np.minimum(bptt, bl - starts)
        rng = self._rng(epoch, 1)
        n = bl // RAND_MIN_LEN + 1  # enough draws to cover bl even at the minimum length
        base = np.where(rng.random_sample(n) < 0.95, float(bptt), bptt / 2.0)
        lens = np.floor(base + RAND_SIGMA * rng.standard_normal(n)).astype(np.int64)
        lens = np.clip(lens, RAND_MIN_LEN, bptt + RAND_MAX_EXTRA)
        ends = np.cumsum(lens)
        n_win = int(np.searchsorted(ends, bl)) + 1  # first window reaching bl is the last
        starts = np.concatenate([[0], ends[: n_win - 1]])
        return starts, np.minimum(lens[:n_win], bl - starts)

    # ---- gathering ------------------------------------------------------------------------
    def _tokens_at(self, plan: _Plan, pos: np.ndarray) -> np.ndarray:
        """Token ids at positions `pos` of the epoch's concatenated stream."""
        d = np.searchsorted(plan.cum, pos, side="right") - 1
        doc = plan.order[d]
        k = pos - plan.cum[d]
        if self.backwards:
            k = self._lengths[doc] - 1 - k
        src = self._starts[doc] + k
        if len(self._ids) == 1:
            return np.asarray(self._ids[0][src])
        out = np.empty(pos.shape, dtype=np.int32)
        which = self._split_of[doc]
        for i, ids in enumerate(self._ids):
            m = which == i
            if m.any():
                out[m] = ids[src[m]]
        return out

    def _batch(self, plan: _Plan, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        start, sl = int(plan.win_start[i]), int(plan.win_len[i])
        rows = np.arange(self.rank * self.bs, (self.rank + 1) * self.bs, dtype=np.int64)
        pos = rows[:, None] * self.bl + start + np.arange(sl + 1, dtype=np.int64)[None, :]
        t = torch.from_numpy(self._tokens_at(plan, pos).astype(np.int64))
        return t[:, :-1].contiguous(), t[:, 1:].contiguous()

    def doc_order(self, epoch: int | None = None) -> np.ndarray:
        """Indices of the documents (across all splits, in order) as laid end to end."""
        return self._plan(self.epoch if epoch is None else epoch).order.copy()

    # ---- iteration (EpochLoader) ---------------------------------------------------------
    def _n_batches(self, plan: _Plan) -> int:
        return len(plan.win_start)

    def _batch_at(self, plan: _Plan, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self._batch(plan, i)

    # ---- display --------------------------------------------------------------------------
    def show_batch(self, vocab: Any, n: int = 6, trunc_at: int = 40) -> list[tuple[str, str]]:
        """Print the first `n` rows of this epoch's first batch as text (x) and text_ (y)."""
        itos = as_vocab(vocab).itos
        x, y = self._batch(self._plan(self.epoch), 0)
        rows = []
        for r in range(min(n, x.shape[0])):
            xt = " ".join(itos[i] for i in x[r, :trunc_at].tolist())
            yt = " ".join(itos[i] for i in y[r, :trunc_at].tolist())
            rows.append((xt, yt))
        _print_table(["text", "text_"], rows)
        return rows


def _print_table(header: list[str], rows: list[tuple[str, ...]], width: int = 60) -> None:
    def cut(s: str) -> str:
        return s if len(s) <= width else s[: width - 3] + "..."

    cols = [header] + [[cut(c) for c in r] for r in rows]
    widths = [max(len(r[j]) for r in cols) for j in range(len(header))]
    for i, r in enumerate(cols):
        idx = "" if i == 0 else str(i - 1)
        print(f"{idx:>3}  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
