"""Peak bytes of live CPU tensor storages, the CPU's stand-in for CUDA's allocator statistics.

A CPU has no ``max_memory_allocated``, and the process's RSS mixes tensors with libraries,
the Python heap and the memory-mapped corpus. :class:`StoragePeak` is a TorchDispatchMode
that adds up the bytes of every tensor storage an op creates while it is active, and takes
them off again when the storage dies, so its ``peak`` is the high-water mark of tensor
memory. Storages that existed before (parameters, optimizer state) are counted once through
``base``. fastulm's custom ops run their Python body under the meter, so their temporaries
count too; scratch memory inside a single aten kernel (oneDNN workspaces) stays invisible.

With ``limit`` set, the first op that takes the total over it raises :class:`OverLimit`:
a probe that cannot fit stops at once instead of running its whole (slow) step.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class OverLimit(Exception):
    """Live tensor storages went over the meter's limit."""


def storage_bytes(tensors: Iterable[torch.Tensor | None], device: str = "cpu") -> int:
    """Bytes of the distinct storages behind ``tensors`` on ``device`` (tied weights once)."""
    seen: dict[int, int] = {}
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.device.type == device:
            st = t.untyped_storage()
            seen[st.data_ptr()] = st.nbytes()
    return sum(seen.values())


class StoragePeak(TorchDispatchMode):
    """Peak bytes of live CPU tensor storages: ``base`` plus those created while active."""

    def __init__(self, base: int = 0, limit: int | None = None):
        super().__init__()
        self.current = self.peak = base
        self.limit = limit
        self._live: dict[int, tuple[int, weakref.ref]] = {}

    def _track(self, out) -> None:
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor) or t.device.type != "cpu":
                continue
            st = t.untyped_storage()
            key, n = st.data_ptr(), st.nbytes()
            if n == 0 or key in self._live:
                continue
            self._live[key] = (n, weakref.ref(st, lambda _r, key=key: self._free(key)))
            self.current += n
            self.peak = max(self.peak, self.current)
        if self.limit is not None and self.current > self.limit:
            raise OverLimit(f"{self.current} bytes of tensors, over the limit of {self.limit}")

    def _free(self, key: int) -> None:
        entry = self._live.pop(key, None)
        if entry is not None:
            self.current -= entry[0]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        impl = _custom_impl(func)
        if impl is not None:  # run the op's python body under the meter: count its temporaries
            with self:
                out = impl(*args, **kwargs)
        else:
            out = func(*args, **kwargs)
        if not any(r.alias_info is not None for r in func._schema.returns):
            self._track(out)  # views and in-place results share an existing storage
        return out


def _custom_impl(func) -> Callable | None:
    """The python body of a fastulm custom op (None for any other op)."""
    if getattr(func, "namespace", None) != "fastulm":
        return None
    from torch._library.custom_ops import OPDEFS

    opdef = OPDEFS.get(func._schema.name)
    return None if opdef is None else opdef._init_fn
