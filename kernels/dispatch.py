"""Which implementation an op runs: the Triton kernel or the memory-lean torch path.

``FASTULM_KERNELS`` (read at every call, so tests can switch it) is ``triton``, ``torch`` or
``auto`` (the default: Triton on CUDA tensors, torch on the CPU). Triton on CPU tensors runs in
the interpreter, which Triton only enables for kernels decorated while ``TRITON_INTERPRET=1``
is set: when the process asks for ``triton`` and has no GPU, this module sets it before the
op modules decorate their kernels. Triton is imported gracefully so that ``fastulm.kernels``
imports where it is absent (macOS, Windows); the torch paths then serve every device.
"""

from __future__ import annotations

import contextlib
import os
import re

import torch

_CHOICES = ("auto", "triton", "torch")

if os.environ.get("FASTULM_KERNELS", "auto") == "triton" and not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

try:
    import triton
    import triton.language as tl
except Exception:  # ImportError, or a broken install on an unsupported platform
    triton = None
    tl = None

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


def _interpreter_problem() -> str | None:
    """Why Triton's interpreter cannot run these kernels here, if it cannot.

    Triton 3.6's interpreter turns a runtime loop bound (a one-element array) into an int
    with ``int(array)``, which numpy 2.4 refuses; triton 3.7 squeezes the array first.
    Compiled kernels (CUDA) are unaffected.
    """
    if triton is None:
        return None
    import numpy

    def version(v: str) -> tuple[int, int]:
        major, minor = (re.match(r"\d*", part).group() or "0" for part in v.split(".")[:2])
        return int(major), int(minor)

    if version(triton.__version__) < (3, 7) and version(numpy.__version__) >= (2, 4):
        return (
            f"the Triton interpreter of triton {triton.__version__} cannot run beside numpy "
            f"{numpy.__version__} (it needs triton >= 3.7 or numpy < 2.4)"
        )
    return None


INTERPRETER_PROBLEM = _interpreter_problem()


def setting() -> str:
    value = os.environ.get("FASTULM_KERNELS", "auto").strip().lower() or "auto"
    if value not in _CHOICES:
        raise ValueError(f"FASTULM_KERNELS={value!r}: expected one of {', '.join(_CHOICES)}")
    return value


def use_triton(device: torch.device) -> bool:
    """True when this call should launch the Triton kernel for tensors on ``device``."""
    value = setting()
    if value == "torch":
        return False
    if value == "auto":
        return triton is not None and device.type == "cuda"
    if triton is None:
        raise RuntimeError("FASTULM_KERNELS=triton but triton is not installed")
    if device.type != "cuda" and not INTERPRET:
        raise RuntimeError(
            "FASTULM_KERNELS=triton on a CPU tensor needs TRITON_INTERPRET=1 set before "
            "fastulm.kernels is imported"
        )
    if device.type != "cuda" and INTERPRETER_PROBLEM:
        raise RuntimeError(f"FASTULM_KERNELS=triton on a CPU tensor: {INTERPRETER_PROBLEM}")
    return True


def device_guard(t: torch.Tensor):
    """Launch on the tensor's GPU (Triton launches on the current device)."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Where sums and losses are kept: fp32 for half types, the input's own dtype otherwise
    (fp64 stays fp64, so fp64 checks are exact)."""
    return torch.promote_types(dtype, torch.float32)
