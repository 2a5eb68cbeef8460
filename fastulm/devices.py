"""Which torch device a command runs on: one rule for training, generation and prediction,
so ``--device`` means the same everywhere and a bad one is a one-line error."""

from __future__ import annotations

from typing import Any


def resolve_device(device: str = "auto") -> Any:
    """``auto``: the CUDA device when there is one, else the CPU. A bad name is a ValueError."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise ValueError(f"unknown device {device!r} (auto, cpu, cuda, cuda:1)") from None
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device {device!r}: fastulm runs on cpu or cuda")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: no CUDA device here (use --device cpu or auto)")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(
            f"device {device!r}: there are {torch.cuda.device_count()} CUDA device(s) here"
        )
    return dev
