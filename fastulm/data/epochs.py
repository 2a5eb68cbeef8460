"""Epoch bookkeeping shared by the loaders: which epoch, how far into it, exact resume.

A loader plans each epoch once (the shuffle is a pure function of seed and epoch), so its
position is just (epoch, batches handed out): saving that pair and replanning is an exact
resume.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any


class EpochLoader:
    """Base of LMLoader and ClasLoader; subclasses plan epochs and build batches."""

    unit = "items"  # what the global batch counts, for error messages

    def _start_epochs(self) -> None:
        self.epoch = 0
        self._resume: tuple[int, int] | None = None  # (epoch, batch) the next pass starts at
        self._pos = 0  # batches handed out in the current pass
        self._cached: Any = None

    def _plan(self, epoch: int) -> Any:
        raise NotImplementedError

    def _n_batches(self, plan: Any) -> int:
        raise NotImplementedError

    def _batch_at(self, plan: Any, i: int) -> Any:
        raise NotImplementedError

    def __len__(self) -> int:
        return self._n_batches(self._plan(self.epoch))

    def __iter__(self) -> Iterator[Any]:
        epoch = self.epoch
        start = 0
        if self._resume is not None and self._resume[0] == epoch:
            start = self._resume[1]
        self._resume = None
        plan = self._plan(epoch)
        for i in range(start, self._n_batches(plan)):
            self._pos = i + 1
            yield self._batch_at(plan, i)
        self._pos = 0
        self.epoch = epoch + 1

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch (and so the shuffle); a pending resume for another epoch is dropped."""
        self.epoch = epoch
        if self._resume is not None and self._resume[0] != epoch:
            self._resume = None

    def state_dict(self) -> dict[str, int]:
        """Where the loader stands: the epoch and how many of its batches were handed out."""
        if self._resume is not None:
            epoch, batch = self._resume
        else:
            epoch, batch = self.epoch, self._pos
        return {"epoch": epoch, "batch": batch, "seed": self.seed, "global_bs": self.global_bs}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """The next pass starts at the saved epoch and batch."""
        if state.get("global_bs", self.global_bs) != self.global_bs:
            raise ValueError(
                f"loader state was saved with a global batch of {state['global_bs']} "
                f"{self.unit}, this loader has {self.global_bs}: the batches would differ"
            )
        self.seed = int(state.get("seed", self.seed))
        self._cached = None
        self.epoch = int(state["epoch"])
        self._resume = (self.epoch, int(state["batch"]))
        self._pos = int(state["batch"])
