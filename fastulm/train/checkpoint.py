"""Atomic checkpoints and weight files, never pickled objects.

A checkpoint holds everything an interrupted run needs to continue exactly: model and
optimizer state, where training stood (fit number, epoch, step), the loader's position, the
model's carried hidden state and every random generator (torch CPU and CUDA, numpy, python).
It is written with ``torch.save`` to a temporary name and renamed into place, and read back
with ``weights_only=True``, so only tensors and plain containers ever come off disk.
Weights alone go to safetensors files (fastulm.weights). Both carry a checksum
(fastulm.checksums) that is verified on load: a damaged file is an error, never used.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fastulm.checksums import DamagedFileError, seal_state, verify_state
from fastulm.files import atomic_write

# The weights file I/O lives in fastulm.weights (inference reads it without the trainer);
# re-exported here for the trainer's ``ckpt.save_weights`` / ``ckpt.CheckpointError``.
from fastulm.weights import (  # noqa: F401
    CheckpointError,
    error_summary,
    load_weights,
    save_weights,
)


def save_state(state: dict[str, Any], path: str | Path) -> None:
    """``state`` with its checksum, atomically; a full disk is a ``WriteError`` naming
    ``path``. torch.save's zip writer, closing after a failed write, raises its own
    RuntimeError ("unexpected pos") over the OSError: the OSError is what happened."""
    sealed = seal_state(state)

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            try:
                torch.save(sealed, f)
            except RuntimeError as err:
                if isinstance(err.__context__, OSError):
                    raise err.__context__ from None
                raise

    atomic_write(path, write)


def load_state(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        raise CheckpointError(f"{path}: not a readable checkpoint ({error_summary(err)})") from None
    try:
        verify_state(state, path)
    except DamagedFileError as err:
        raise CheckpointError(str(err)) from None
    if isinstance(state, dict):
        state.pop("sha256", None)
    return state


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "name": np_state[0],
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached": float(np_state[4]),
        },
        "python": _to_lists(random.getstate()),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state((n["name"], keys, n["pos"], n["has_gauss"], n["cached"]))
    random.setstate(_to_tuples(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_lists(obj):
    return [_to_lists(o) for o in obj] if isinstance(obj, (tuple, list)) else obj


def _to_tuples(obj):
    return tuple(_to_tuples(o) for o in obj) if isinstance(obj, list) else obj
