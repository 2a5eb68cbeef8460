"""Weights files: a model's tensors as safetensors, with a checksum verified on load.

Shared by training (checkpoints, ``learn.save``) and inference (reading a run back), so it
belongs to neither. Tied tensors are stored once; the checksum (fastulm.checksums) makes a
damaged file an error, never a model with changed weights. torch and safetensors are
imported where used, so that the torch-free ONNX path can name ``CheckpointError``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from fastulm.checksums import DamagedFileError, seal_safetensors, verify_safetensors
from fastulm.files import atomic_write

if TYPE_CHECKING:
    from torch import nn


class CheckpointError(RuntimeError):
    """A checkpoint or weights file that is missing, corrupt or for another model."""


def error_summary(err: BaseException) -> str:
    """One line of an exception's message: torch's state-dict errors start with a header
    line ("Error(s) in loading state_dict for ...") and list the real problems below it."""
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].startswith("Error(s) in loading"):
        lines = lines[1:]
    return lines[0] if lines else type(err).__name__


def save_weights(model: nn.Module, path: str | Path) -> None:
    """Model weights as safetensors (shared tensors such as the tied decoder stored once)."""
    from safetensors.torch import save_model

    atomic_write(path, lambda tmp: write_sealed(tmp, lambda: save_model(_unwrap(model), tmp)))


def write_sealed(tmp: str, save: Callable[[], object]) -> None:
    """Run ``save()`` (which writes a safetensors file at ``tmp``), then seal ``tmp``.

    safetensors reports a full disk as its own error type; it becomes an ``OSError`` here,
    so that ``atomic_write`` names the file instead of a traceback escaping."""
    try:
        save()
    except OSError:
        raise
    except Exception as err:
        raise OSError(error_summary(err)) from None
    seal_safetensors(tmp)


def load_weights(model: nn.Module, path: str | Path, strict: bool = True) -> None:
    from safetensors.torch import load_model

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such weights file")
    try:
        verify_safetensors(path)
    except DamagedFileError as err:
        raise CheckpointError(str(err)) from None
    try:
        missing, unexpected = load_model(_unwrap(model), path, strict=False)
    except Exception as err:
        raise CheckpointError(
            f"{path}: cannot load these weights into the model ({error_summary(err)})"
        ) from None
    if strict and (missing or unexpected):
        raise CheckpointError(
            f"{path}: weights do not match the model (missing {sorted(missing)[:3]}, "
            f"unexpected {sorted(unexpected)[:3]})"
        )


def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)
