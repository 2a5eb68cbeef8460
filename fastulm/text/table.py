"""Open-addressing string tables that numba kernels probe and grow in place.

A table holds strings as code points (one flat uint32 pool plus start offsets) and a slot
array; a slot packs 30 bits of the key's hash, its `key_low` flag and the entry number, so
a probe only reads an entry's key when those match. Keys are compared code point by code
point, never trusted to the hash alone. `key_low` marks keys stored ASCII-lowercased (the run table looks plain ASCII
runs up that way); other tables leave it False. Kernels may add entries, but only into
room the Python side reserved beforehand (`StringTable.reserve`).
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

import numpy as np
from llvmlite import binding as _llvm
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from fastulm.text.jit import kernel

FNV_OFFSET = np.uint64(14695981039346656037)  # FNV-1a
FNV_PRIME = np.uint64(1099511628211)


@kernel(allocates=False)
def fnv(arr, s, e):
    h = FNV_OFFSET
    for i in range(s, e):
        h = (h ^ np.uint64(arr[i])) * FNV_PRIME
    return h


# llvm.prefetch's pointer argument is typed (i8*) before LLVM 15, opaque (ptr) after
_PREFETCH = "llvm.prefetch.p0" if _llvm.llvm_version_info[0] >= 15 else "llvm.prefetch.p0i8"


@intrinsic
def prefetch(typingctx, arr, idx):
    """Ask the CPU to start loading arr[idx] (a hint: nothing is read or checked). Probes
    of a big table miss the cache; fetching a few lookups ahead overlaps those misses."""

    def codegen(context, builder, signature, args):
        arr_type = signature.args[0]
        array = context.make_array(arr_type)(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, arr_type, array, [args[1]])
        i8p, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]), _PREFETCH
        )
        # read access, high temporal locality, data cache
        builder.call(fn, [builder.bitcast(ptr, i8p), i32(0), i32(3), i32(1)])
        return context.get_dummy_value()

    return types.void(arr, idx), codegen


@kernel(inline="always")
def slot_value(h, lower, k):
    """A slot: the hash's top 30 bits and the lowercase flag above the entry (never < 0)."""
    return (np.int64(h >> np.uint64(34)) << 33) | (np.int64(lower) << 32) | np.int64(k)


@kernel(allocates=False)
def probe(arr, s, e, h, lower, slots, ent_hash, key_start, key_pool, key_low):
    """Entry of arr[s:e] (ASCII-lowercased if `lower`) in the table, or -(slot + 1) for the
    empty slot to use. Lowercased keys and raw keys live apart (`key_low`)."""
    mask = len(slots) - 1
    j = np.int64(h & np.uint64(mask))
    n = e - s
    tag = slot_value(h, lower, 0)
    while True:
        v = slots[j]
        if v < 0:
            return -(j + 1)
        k = v & 0xFFFFFFFF
        if v - k == tag and key_start[k + 1] - key_start[k] == n:
            ks = key_start[k]
            same = True
            for i in range(n):
                c = arr[s + i]
                if lower and 65 <= c <= 90:
                    c += 32
                if key_pool[ks + i] != c:
                    same = False
                    break
            if same:
                return k
        j = (j + 1) & mask


@kernel(allocates=False)
def intern(arr, s, e, n, slots, ent_hash, key_start, key_pool, key_low):
    """Entry of arr[s:e], added as entry n when new. Returns (entry, entries now)."""
    h = fnv(arr, s, e)
    k = probe(arr, s, e, h, False, slots, ent_hash, key_start, key_pool, key_low)
    if k >= 0:
        return k, n
    ks = key_start[n]
    for i in range(e - s):  # a loop: a slice copy needs numba's runtime (see kernel)
        key_pool[ks + i] = arr[s + i]
    key_start[n + 1] = ks + e - s
    ent_hash[n] = h
    key_low[n] = False
    slots[-k - 1] = slot_value(h, False, n)
    return n, n + 1


@kernel(allocates=False)
def lookup(arr, s, e, slots, ent_hash, key_start, key_pool, key_low):
    """Entry of arr[s:e], or -1."""
    k = probe(arr, s, e, fnv(arr, s, e), False, slots, ent_hash, key_start, key_pool, key_low)
    return k if k >= 0 else -1


@kernel
def insert(keys, offsets, lows, slots, ent_hash, key_start, key_pool, key_low, first):
    """Add keys[offsets[i]:offsets[i+1]] as entries first, first+1, ... (capacity is ready).

    Lowercased keys (lows[i]) must come already lowercased."""
    for i in range(len(offsets) - 1):
        s, e = offsets[i], offsets[i + 1]
        h = fnv(keys, s, e)
        k = probe(keys, s, e, h, lows[i], slots, ent_hash, key_start, key_pool, key_low)
        ent = first + i
        ks = key_start[ent]
        key_pool[ks : ks + e - s] = keys[s:e]
        key_start[ent + 1] = ks + e - s
        ent_hash[ent] = h
        key_low[ent] = lows[i]
        slots[-k - 1] = slot_value(h, lows[i], ent)


@kernel
def rehash(n_ent, size, ent_hash, key_low):
    slots = np.full(size, -1, np.int64)
    mask = size - 1
    for k in range(n_ent):
        j = np.int64(ent_hash[k] & np.uint64(mask))
        while slots[j] >= 0:
            j = (j + 1) & mask
        slots[j] = slot_value(ent_hash[k], key_low[k], k)
    return slots


def grown(a: np.ndarray, used: int, cap: int) -> np.ndarray:
    """``a`` with room for ``cap`` elements, its first ``used`` kept and the rest left
    unset (written before they are read). np.resize would copy all of ``a`` and fill the
    rest by repeating it: about a tenth of a tokenizer's time went to that."""
    new = np.empty(cap, a.dtype)
    new[:used] = a[:used]
    return new


def code_points(strings: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """All strings' code points in one uint32 array, and their offsets."""
    offsets = np.zeros(len(strings) + 1, np.int64)
    np.cumsum([len(s) for s in strings], out=offsets[1:])
    flat = "".join(strings).encode("utf-32-le", "surrogatepass")
    return np.frombuffer(flat, np.uint32), offsets


class StringTable:
    """Strings -> entry numbers 0, 1, 2, ... in insertion order, shared with numba."""

    def __init__(self, strings: Sequence[str] = ()) -> None:
        self.n = 0
        self.slots = np.full(1 << 10, -1, np.int64)
        self.ent_hash = np.zeros(1 << 9, np.uint64)
        self.key_start = np.zeros((1 << 9) + 1, np.int64)
        self.key_pool = np.zeros(1 << 12, np.uint32)
        self.key_low = np.zeros(1 << 9, np.bool_)
        self.add(strings)

    @property
    def arrays(self) -> tuple:
        return self.slots, self.ent_hash, self.key_start, self.key_pool, self.key_low

    def reserve(self, n_new: int, n_chars: int) -> None:
        """Room for n_new more entries holding n_chars more code points."""
        need = self.n + n_new
        if need > len(self.ent_hash):
            cap = max(need, 2 * len(self.ent_hash))
            self.ent_hash = grown(self.ent_hash, self.n, cap)
            self.key_low = grown(self.key_low, self.n, cap)
            self.key_start = grown(self.key_start, self.n + 1, cap + 1)
        if 2 * need > len(self.slots):
            size = len(self.slots)
            while 2 * need > size:
                size *= 2
            self.slots = rehash(self.n, size, self.ent_hash, self.key_low)
        used = self.key_start[self.n]
        if used + n_chars > len(self.key_pool):
            cap = max(used + n_chars, 2 * len(self.key_pool))
            self.key_pool = grown(self.key_pool, used, cap)

    def add(self, strings: Sequence[str]) -> None:
        """Append new strings (not yet in the table) as the next entries."""
        if not strings:
            return
        keys, offsets = code_points(strings)
        self.reserve(len(strings), len(keys))
        lows = np.zeros(len(strings), np.bool_)
        insert(keys, offsets, lows, *self.arrays, self.n)
        self.n += len(strings)

    def strings(self, lo: int, hi: int) -> list[str]:
        """Entries lo..hi-1 as str."""
        a, b = self.key_start[lo], self.key_start[hi]
        text = self.key_pool[a:b].tobytes().decode("utf-32-le", "surrogatepass")
        starts = (self.key_start[lo : hi + 1] - a).tolist()
        return [text[i:j] for i, j in pairwise(starts)]
